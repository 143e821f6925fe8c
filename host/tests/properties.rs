//! The manifest parser, the router and policy resolution against inputs nobody here chose
//! (proptest): no panic on any input, one-line errors, and the rules the README states.

#![allow(clippy::unwrap_used)]

use agora_host::manifest::Manifest;
use agora_host::policy::{self, Access, PathPattern, Policy, RateLimits};
use agora_host::router::Router;
use proptest::prelude::*;
use std::path::Path;

/// Paths and patterns over a small alphabet, so that they collide often.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_owned()),
        Just("b".to_owned()),
        Just("api".to_owned()),
        Just("x".to_owned()),
        "[a-z0-9._-]{0,4}",
    ]
}

fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(segment(), 0..5).prop_map(|segments| {
        let mut path = String::from("/");
        path.push_str(&segments.join("/"));
        path
    })
}

fn route() -> impl Strategy<Value = String> {
    (path(), any::<bool>()).prop_map(|(path, prefix)| {
        let stem = path.trim_end_matches('/');
        match (prefix, stem) {
            (true, stem) => format!("{stem}/..."),
            (false, "") => "/".to_owned(),
            (false, stem) => stem.to_owned(),
        }
    })
}

fn policy_pattern() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(prop_oneof![segment(), Just("*".to_owned())], 0..4),
        any::<bool>(),
    )
        .prop_map(|(segments, prefix)| {
            let mut pattern = format!("/{}", segments.join("/"));
            if prefix {
                pattern = format!("{}/...", pattern.trim_end_matches('/'));
            }
            pattern
        })
}

fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("GET".to_owned()),
        Just("HEAD".to_owned()),
        Just("POST".to_owned()),
        Just("PUT".to_owned()),
        Just("DELETE".to_owned()),
        Just("PATCH".to_owned()),
        "[A-Z]{1,7}",
    ]
}

fn access() -> impl Strategy<Value = Access> {
    prop_oneof![
        Just(Access::Public),
        Just(Access::Authenticated),
        Just(Access::Internal)
    ]
}

fn policies() -> impl Strategy<Value = Vec<Policy>> {
    prop::collection::vec(
        (
            prop::collection::vec(policy_pattern(), 0..3),
            prop::collection::vec(method(), 0..3),
            access(),
        ),
        0..6,
    )
    .prop_map(|tables| {
        tables
            .into_iter()
            .filter_map(|(routes, methods, access)| {
                let routes = routes
                    .iter()
                    .map(|r| PathPattern::parse(r))
                    .collect::<Result<Vec<_>, _>>()
                    .ok()?;
                Some(Policy {
                    routes,
                    methods,
                    access,
                    roles: Vec::new(),
                    rate_limit: RateLimits::default(),
                })
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::default())]

    /// The router picks an exact pattern equal to the path, else the longest prefix whose stem
    /// is the path or a whole-segment ancestor of it; nothing when neither exists.
    #[test]
    fn the_router_picks_the_most_specific_route(routes in prop::collection::vec(route(), 0..8), path in path()) {
        let router = Router::new(routes.iter().map(|r| (r.clone(), r.clone())));
        let trimmed = match path.trim_end_matches('/') { "" => "/", t => t };
        let under = |stem: &str| stem.is_empty() || trimmed == stem || trimmed.starts_with(&format!("{stem}/"));
        let best_prefix = routes
            .iter()
            .filter_map(|r| r.strip_suffix("/...").map(|stem| (stem, r)))
            .filter(|(stem, _)| under(stem))
            .map(|(stem, _)| stem.len())
            .max();
        match router.lookup(&path) {
            Some(found) if !found.pattern.ends_with("/...") => {
                prop_assert_eq!(found.pattern, trimmed);
            }
            Some(found) => {
                prop_assert!(!routes.iter().any(|r| r == trimmed), "an exact route was passed over");
                let stem = found.pattern.strip_suffix("/...").unwrap();
                prop_assert!(under(stem), "{} does not cover {}", found.pattern, path);
                prop_assert_eq!(Some(stem.len()), best_prefix);
            }
            None => {
                prop_assert!(!routes.iter().any(|r| r == trimmed));
                prop_assert_eq!(best_prefix, None);
            }
        }
    }

    /// Policy resolution: any method and path resolve without a panic; the method's case never
    /// changes the policy; a policy listing GET covers HEAD; the policy found matches.
    #[test]
    fn policies_resolve_without_regard_to_case(policies in policies(), method in method(), path in path()) {
        let (index, resolved) = policy::resolve(&policies, &method, &path);
        let (lower_index, _) = policy::resolve(&policies, &method.to_ascii_lowercase(), &path);
        prop_assert_eq!(index, lower_index);
        if index == usize::MAX {
            prop_assert_eq!(resolved.access, Access::Public);
        } else {
            prop_assert!(resolved.methods.is_empty()
                || resolved.methods.iter().any(|m| m.eq_ignore_ascii_case(&method)
                    || (m == "GET" && method == "HEAD")));
        }
        let head_listed = policies
            .iter()
            .any(|p| p.methods.iter().any(|m| m.eq_ignore_ascii_case("HEAD")));
        if method == "GET" && !head_listed {
            prop_assert_eq!(policy::resolve(&policies, "HEAD", &path).0, index);
        }
    }

    /// A pattern that parses matches the example path it produces.
    #[test]
    fn parsed_patterns_match_their_example(text in "\\PC{0,40}") {
        if let Ok(pattern) = PathPattern::parse(&text) {
            let policy = Policy {
                routes: vec![pattern.clone()],
                methods: Vec::new(),
                access: Access::Internal,
                roles: Vec::new(),
                rate_limit: RateLimits::default(),
            };
            prop_assert_eq!(policy::resolve(&[policy], "GET", &pattern.example()).0, 0);
        }
    }

    /// Any text: the manifest parser answers Ok or a one-line error, never a panic.
    #[test]
    fn any_text_parses_or_fails_on_one_line(text in "\\PC{0,300}") {
        if let Err(err) = Manifest::parse(Path::new("/shop/agora.toml"), &text) {
            prop_assert!(!err.to_string().contains('\n'), "{}", err);
        }
    }

    /// Manifests built from the real keys with random values: Ok or a one-line error.
    #[test]
    fn manifests_of_real_keys_parse_or_fail_on_one_line(
        name in "[a-z0-9-]{0,12}",
        routes in prop::collection::vec("\\PC{0,12}", 0..3),
        values in prop::collection::vec(("(memory_mib|deadline_ms|body_kib|concurrency|cache_keys|cache_value_kib)", any::<i64>()), 0..4),
        policy_routes in prop::collection::vec(policy_pattern(), 0..2),
        methods in prop::collection::vec("\\PC{0,6}", 0..3),
        access in "(public|authenticated|internal|other)",
        rate in "\\PC{0,8}",
    ) {
        let mut text = format!(
            "[[component]]\nname = {name:?}\nsource = \"c.wasm\"\nroutes = {routes:?}\n[component.limits]\n"
        );
        let mut seen = std::collections::HashSet::new();
        for (key, value) in values {
            if seen.insert(key.clone()) {
                text.push_str(&format!("{key} = {value}\n"));
            }
        }
        text.push_str(&format!(
            "[[component.policy]]\nroutes = {policy_routes:?}\nmethods = {methods:?}\naccess = {access:?}\nrate_limit = {{ per_ip = {rate:?} }}\n"
        ));
        if let Err(err) = Manifest::parse(Path::new("/shop/agora.toml"), &text) {
            prop_assert!(!err.to_string().contains('\n'), "{}", err);
        }
    }
}
