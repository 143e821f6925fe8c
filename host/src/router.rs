//! Maps a request path to the component that serves it.
//!
//! Two kinds of pattern: an exact path (`/hello`) and a prefix (`/hello/...`, which matches
//! `/hello` itself and everything below it). An exact match wins over any prefix; among prefixes
//! the longest wins, so nested routes of different components work as expected. Matching is on
//! whole segments: `/hello/...` does not match `/helloworld`.
//!
//! The table is an immutable value built once from the manifest; replacing it is a matter of
//! building a new one, so lookups never lock.

use std::collections::HashMap;

/// The routing table, generic over what a route points at.
#[derive(Debug, Clone)]
pub struct Router<T> {
    exact: HashMap<String, (String, T)>,
    /// `(stem, pattern, target)` sorted by stem length, longest first. The stem of `/a/...` is
    /// `/a`; the stem of `/...` is the empty string.
    prefixes: Vec<(String, String, T)>,
}

/// A successful lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match<'a, T> {
    /// The pattern that matched, as written in the manifest (normalised).
    pub pattern: &'a str,
    /// What the pattern points at.
    pub target: &'a T,
}

impl<T> Router<T> {
    /// Builds a table from normalised patterns (see the manifest module). Patterns are expected
    /// to be unique; a repeated pattern keeps its first target.
    pub fn new(routes: impl IntoIterator<Item = (String, T)>) -> Router<T> {
        let mut exact = HashMap::new();
        let mut prefixes = Vec::new();
        for (pattern, target) in routes {
            match pattern.strip_suffix("/...") {
                Some(stem) => {
                    if !prefixes.iter().any(|(_, p, _)| *p == pattern) {
                        prefixes.push((stem.to_owned(), pattern, target));
                    }
                }
                None => {
                    exact.entry(pattern.clone()).or_insert((pattern, target));
                }
            }
        }
        prefixes.sort_by_key(|(stem, _, _)| std::cmp::Reverse(stem.len()));
        Router { exact, prefixes }
    }

    /// The same table with each target replaced by `f(pattern, target)`.
    pub fn map<U>(self, mut f: impl FnMut(&str, T) -> U) -> Router<U> {
        Router {
            exact: self
                .exact
                .into_iter()
                .map(|(path, (pattern, target))| {
                    let target = f(&pattern, target);
                    (path, (pattern, target))
                })
                .collect(),
            prefixes: self
                .prefixes
                .into_iter()
                .map(|(stem, pattern, target)| {
                    let target = f(&pattern, target);
                    (stem, pattern, target)
                })
                .collect(),
        }
    }

    /// Finds the most specific route for `path` (the path only, without the query).
    pub fn lookup(&self, path: &str) -> Option<Match<'_, T>> {
        let trimmed = match path.trim_end_matches('/') {
            "" => "/",
            trimmed => trimmed,
        };
        if let Some((pattern, target)) = self.exact.get(trimmed) {
            return Some(Match { pattern, target });
        }
        self.prefixes
            .iter()
            .find(|(stem, _, _)| {
                trimmed == stem
                    || stem.is_empty()
                    || (trimmed.starts_with(stem.as_str())
                        && trimmed.as_bytes().get(stem.len()) == Some(&b'/'))
            })
            .map(|(_, pattern, target)| Match { pattern, target })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router<&'static str> {
        Router::new([
            ("/hello".to_owned(), "hello-exact"),
            ("/hello/...".to_owned(), "hello-prefix"),
            ("/api/...".to_owned(), "api"),
            ("/api/catalog/...".to_owned(), "catalog"),
            ("/api/catalog/special".to_owned(), "special"),
        ])
    }

    fn target(router: &Router<&'static str>, path: &str) -> Option<&'static str> {
        router.lookup(path).map(|m| *m.target)
    }

    #[test]
    fn a_mapped_table_routes_as_before_to_each_targets_image() {
        let mapped = router().map(|pattern, target| format!("{target} at {pattern}"));
        for (path, pattern) in [
            ("/hello", "/hello"),
            ("/hello/there", "/hello/..."),
            ("/api/catalog/special", "/api/catalog/special"),
            ("/api/catalog/1", "/api/catalog/..."),
            ("/api/orders", "/api/..."),
        ] {
            let before = router()
                .lookup(path)
                .map(|m| (m.pattern.to_owned(), *m.target));
            let after = mapped.lookup(path).expect("still routed");
            let (old_pattern, old_target) = before.expect("routed before");
            assert_eq!((after.pattern, old_pattern.as_str()), (pattern, pattern));
            assert_eq!(*after.target, format!("{old_target} at {pattern}"));
        }
        assert!(mapped.lookup("/elsewhere").is_none());
    }

    #[test]
    fn exact_beats_prefix() {
        let r = router();
        assert_eq!(target(&r, "/hello"), Some("hello-exact"));
        assert_eq!(target(&r, "/hello/"), Some("hello-exact"));
        assert_eq!(target(&r, "/hello/there"), Some("hello-prefix"));
        assert_eq!(target(&r, "/api/catalog/special"), Some("special"));
    }

    #[test]
    fn longest_prefix_wins() {
        let r = router();
        assert_eq!(target(&r, "/api/catalog/items/7"), Some("catalog"));
        assert_eq!(target(&r, "/api/catalog"), Some("catalog"));
        assert_eq!(target(&r, "/api/orders"), Some("api"));
        assert_eq!(target(&r, "/api"), Some("api"));
    }

    #[test]
    fn prefixes_match_whole_segments_only() {
        let r = router();
        assert_eq!(target(&r, "/helloworld"), None);
        assert_eq!(target(&r, "/apix"), None);
        assert_eq!(target(&r, "/"), None);
    }

    #[test]
    fn root_wildcard_catches_everything_else() {
        let r = Router::new([("/...".to_owned(), "all"), ("/a".to_owned(), "a")]);
        assert_eq!(r.lookup("/").map(|m| *m.target), Some("all"));
        assert_eq!(r.lookup("/zzz/y").map(|m| *m.target), Some("all"));
        assert_eq!(r.lookup("/a").map(|m| *m.target), Some("a"));
        assert_eq!(r.lookup("/b").map(|m| m.pattern), Some("/..."));
    }
}
