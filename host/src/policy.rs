//! Route policies: who may call which of a component's routes, and how often.
//!
//! A component's `[[component.policy]]` tables each name path patterns (optional: all its
//! routes), methods (optional: all), an access level and rate limits. For a request, the most
//! specific matching policy applies; with none, the route is public and unlimited. Methods
//! compare without regard to case, and a policy listing `GET` also covers `HEAD` (which a
//! component may answer as a `GET`). A method that the policies of a route do not list gets the
//! component's default policy: the one without `routes` and `methods` if there is one, public
//! otherwise.
//!
//! Path patterns are route patterns plus `*`, which matches exactly one segment:
//! `/api/accounts/*/role`, `/api/products/...`. Specificity, highest first: more literal
//! segments, then an exact pattern over a prefix, then a policy naming methods over one that
//! does not, then manifest order.

use agora_ratelimit::Rate;

/// Who may reach a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone. A valid bearer token is still verified and passed on as the identity; an invalid
    /// one is ignored.
    Public,
    /// A valid access token is required (401 otherwise); with roles, one of them (403
    /// otherwise).
    Authenticated,
    /// Only other components, through the host (`http://NAME.agora.internal`); from outside
    /// the route does not exist (404). With roles, the forwarded token must carry one.
    Internal,
}

impl Access {
    /// The manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Public => "public",
            Access::Authenticated => "authenticated",
            Access::Internal => "internal",
        }
    }
}

/// Token buckets applied to the requests a policy covers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimits {
    /// Per client IP address.
    pub per_ip: Option<Rate>,
    /// Per verified subject (requests without a valid token are not counted here).
    pub per_subject: Option<Rate>,
}

/// One `[[component.policy]]` table, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Path patterns; empty = every route of the component.
    pub routes: Vec<PathPattern>,
    /// Upper-case methods; empty = every method.
    pub methods: Vec<String>,
    /// Who may call.
    pub access: Access,
    /// Roles of which the caller needs one (empty: none needed beyond `access`).
    pub roles: Vec<String>,
    /// Rate limits.
    pub rate_limit: RateLimits,
}

/// The policy of a request that no policy table covers.
pub static OPEN: Policy = Policy {
    routes: Vec::new(),
    methods: Vec::new(),
    access: Access::Public,
    roles: Vec::new(),
    rate_limit: RateLimits {
        per_ip: None,
        per_subject: None,
    },
};

impl Policy {
    /// Whether the policy requires a valid access token.
    pub fn needs_token(&self) -> bool {
        self.access == Access::Authenticated || !self.roles.is_empty()
    }

    /// How specifically the policy matches `method` and `path`, or `None` when it does not.
    fn specificity(&self, method: &str, path: &[&str]) -> Option<(usize, bool, bool)> {
        let listed = |m: &String| {
            m.eq_ignore_ascii_case(method) || (m == "GET" && method.eq_ignore_ascii_case("HEAD"))
        };
        if !self.methods.is_empty() && !self.methods.iter().any(listed) {
            return None;
        }
        let has_methods = !self.methods.is_empty();
        if self.routes.is_empty() {
            return Some((0, false, has_methods));
        }
        self.routes
            .iter()
            .filter(|pattern| pattern.matches(path))
            .map(|pattern| (pattern.literals(), !pattern.prefix, has_methods))
            .max()
    }
}

/// The policy that applies to `method` `path` among `policies`: the most specific match, the
/// first in manifest order on a tie; [`OPEN`] when none matches.
pub fn resolve<'a>(policies: &'a [Policy], method: &str, path: &str) -> (usize, &'a Policy) {
    if policies.is_empty() {
        return (usize::MAX, &OPEN);
    }
    // The segments of a usual path fit on the stack: no allocation per request.
    let mut stack = [""; 16];
    let mut count = 0;
    let mut split = path.split('/').filter(|s| !s.is_empty());
    for (slot, segment) in stack.iter_mut().zip(&mut split) {
        *slot = segment;
        count += 1;
    }
    let longer: Vec<&str>;
    let segments = match split.next() {
        None => &stack[..count],
        Some(more) => {
            longer = stack.iter().copied().chain([more]).chain(split).collect();
            &longer[..]
        }
    };
    let mut best: Option<((usize, bool, bool), usize)> = None;
    for (index, policy) in policies.iter().enumerate() {
        if let Some(rank) = policy.specificity(method, segments)
            && best.is_none_or(|(best_rank, _)| rank > best_rank)
        {
            best = Some((rank, index));
        }
    }
    match best {
        Some((_, index)) => (index, &policies[index]),
        None => (usize::MAX, &OPEN),
    }
}

/// A policy path pattern: literal segments, `*` for any one segment, and an optional final
/// `...` for any number (including none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    text: String,
    segments: Vec<Option<String>>,
    prefix: bool,
}

impl PathPattern {
    /// Parses a pattern; the message says what is wrong.
    pub fn parse(pattern: &str) -> Result<PathPattern, String> {
        if !pattern.starts_with('/') {
            return Err(format!("route `{pattern}` must start with `/`"));
        }
        if pattern.contains(['?', '#']) || pattern.chars().any(char::is_whitespace) {
            return Err(format!(
                "route `{pattern}` may hold a path only (no query, fragment or spaces)"
            ));
        }
        let (stem, prefix) = match pattern.strip_suffix("/...") {
            Some(stem) => (stem, true),
            None => (pattern, false),
        };
        let mut segments = Vec::new();
        for segment in stem.split('/').filter(|s| !s.is_empty()) {
            match segment {
                "..." => {
                    return Err(format!(
                        "route `{pattern}`: `...` is allowed only as the last segment"
                    ));
                }
                "*" => segments.push(None),
                literal if literal.contains('*') => {
                    return Err(format!(
                        "route `{pattern}`: `*` must be a whole segment (`/a/*/b`)"
                    ));
                }
                literal => segments.push(Some(literal.to_owned())),
            }
        }
        Ok(PathPattern {
            text: pattern.trim_end_matches('/').to_owned(),
            segments,
            prefix,
        })
    }

    /// The pattern as written (without a trailing `/`).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    fn literals(&self) -> usize {
        self.segments.iter().filter(|s| s.is_some()).count()
    }

    fn matches(&self, path: &[&str]) -> bool {
        if path.len() < self.segments.len() || (!self.prefix && path.len() != self.segments.len()) {
            return false;
        }
        self.segments
            .iter()
            .zip(path)
            .all(|(pattern, segment)| pattern.as_deref().is_none_or(|p| p == *segment))
    }

    /// A path this pattern matches (each `*` as `x`), to check that a route serves it.
    pub fn example(&self) -> String {
        let mut path = String::new();
        for segment in &self.segments {
            path.push('/');
            path.push_str(segment.as_deref().unwrap_or("x"));
        }
        if path.is_empty() {
            path.push('/');
        }
        path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(routes: &[&str], methods: &[&str], access: Access) -> Policy {
        Policy {
            routes: routes
                .iter()
                .map(|r| PathPattern::parse(r).expect("valid pattern"))
                .collect(),
            methods: methods.iter().map(|m| m.to_string()).collect(),
            access,
            roles: Vec::new(),
            rate_limit: RateLimits::default(),
        }
    }

    #[test]
    fn the_most_specific_policy_wins() {
        let policies = [
            policy(&[], &[], Access::Authenticated),
            policy(&["/api/products/..."], &["GET"], Access::Public),
            policy(&["/api/products/*/stock"], &[], Access::Internal),
            policy(&["/api/products/special"], &[], Access::Public),
        ];
        let access = |method, path| resolve(&policies, method, path).1.access;
        assert_eq!(access("GET", "/api/products"), Access::Public);
        assert_eq!(access("GET", "/api/products/7"), Access::Public);
        assert_eq!(access("POST", "/api/products"), Access::Authenticated);
        assert_eq!(access("GET", "/api/products/7/stock"), Access::Internal);
        assert_eq!(access("DELETE", "/api/products/special"), Access::Public);
        assert_eq!(access("GET", "/elsewhere"), Access::Authenticated);
    }

    #[test]
    fn paths_longer_than_the_stack_buffer_resolve_on_every_segment() {
        let long: String = (1..=20).map(|n| format!("/s{n}")).collect();
        let exact: String = long.clone();
        let policies = [
            policy(&["/s1/..."], &[], Access::Authenticated),
            policy(&[&exact], &[], Access::Internal),
        ];
        assert_eq!(resolve(&policies, "GET", &long).1.access, Access::Internal);
        // The 17th segment and on count: one more, or one different, is not the exact route.
        let longer = format!("{long}/s21");
        assert_eq!(
            resolve(&policies, "GET", &longer).1.access,
            Access::Authenticated
        );
        let different = long.replace("/s17", "/x17");
        assert_eq!(
            resolve(&policies, "GET", &different).1.access,
            Access::Authenticated
        );
        let sixteen: String = (1..=16).map(|n| format!("/s{n}")).collect();
        assert_eq!(
            resolve(&policies, "GET", &sixteen).1.access,
            Access::Authenticated
        );
    }

    #[test]
    fn without_a_matching_policy_a_route_is_open() {
        let policies = [policy(&["/a"], &["POST"], Access::Authenticated)];
        let (index, resolved) = resolve(&policies, "GET", "/a");
        assert_eq!((index, resolved.access), (usize::MAX, Access::Public));
        assert_eq!(resolve(&policies, "POST", "/a/").0, 0);
        assert_eq!(resolve(&policies, "POST", "/a/b").0, usize::MAX);
    }

    #[test]
    fn methods_compare_without_case_and_get_covers_head() {
        let policies = [
            policy(&[], &[], Access::Authenticated),
            policy(&["/a/*/role"], &["PUT"], Access::Internal),
            policy(&["/a"], &["GET"], Access::Internal),
        ];
        let access = |method, path| resolve(&policies, method, path).1.access;
        assert_eq!(access("put", "/a/7/role"), Access::Internal);
        assert_eq!(access("Put", "/a/7/role"), Access::Internal);
        assert_eq!(access("HEAD", "/a"), Access::Internal);
        assert_eq!(access("head", "/a"), Access::Internal);
        // Unlisted methods get the component's default policy, not an open route.
        assert_eq!(access("DELETE", "/a/7/role"), Access::Authenticated);
        assert_eq!(access("PURGE", "/a"), Access::Authenticated);
        let without_default = [policy(&["/a"], &["POST"], Access::Internal)];
        assert_eq!(
            resolve(&without_default, "post", "/a").1.access,
            Access::Internal
        );
        assert_eq!(
            resolve(&without_default, "GET", "/a").1.access,
            Access::Public
        );
    }

    #[test]
    fn stars_match_one_segment_and_prefixes_any_number() {
        let star = PathPattern::parse("/a/*/c").expect("valid");
        assert!(star.matches(&["a", "b", "c"]));
        assert!(!star.matches(&["a", "c"]));
        assert!(!star.matches(&["a", "b", "c", "d"]));
        assert_eq!(star.example(), "/a/x/c");
        let prefix = PathPattern::parse("/a/...").expect("valid");
        assert!(prefix.matches(&["a"]));
        assert!(prefix.matches(&["a", "b", "c"]));
        assert!(!prefix.matches(&["b"]));
    }

    #[test]
    fn bad_patterns_are_refused() {
        for (pattern, expected) in [
            ("a", "must start with `/`"),
            ("/a/.../b", "last segment"),
            ("/a*", "whole segment"),
            ("/a?x", "path only"),
        ] {
            let err = PathPattern::parse(pattern).expect_err(pattern);
            assert!(err.contains(expected), "{pattern}: {err}");
        }
    }
}
