//! The host's modules form no cycle: each file of `host/src` names the modules it uses as
//! `crate::NAME` (tests excluded), and following those names from any module never leads back
//! to it. The request path then reads top-down — server → router → edge → trigger → instance —
//! and a module calls back up only through a seam (`calls::InternalHandler`).

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module name (`state`, `triggers::http`) → the modules its non-test code names.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            for inner in std::fs::read_dir(&path).unwrap() {
                files.push(inner.unwrap().path());
            }
        } else {
            files.push(path);
        }
    }
    let mut graph = BTreeMap::new();
    for path in files {
        if path.extension().and_then(|e| e.to_str()) != Some("rs") {
            continue;
        }
        let relative = path.strip_prefix(&src).unwrap().with_extension("");
        let name = relative.to_str().unwrap().replace('/', "::");
        if ["lib", "main", "triggers::mod"].contains(&name.as_str()) {
            continue;
        }
        // A folder module (`fleet/mod.rs`) is the module others name (`crate::fleet`).
        let name = name.strip_suffix("::mod").unwrap_or(&name).to_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap();
        let mut uses = BTreeSet::new();
        for (at, _) in code.match_indices("crate::") {
            let rest = &code[at + "crate::".len()..];
            let first: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            let used = if first == "triggers" {
                let second: String = rest["triggers::".len().min(rest.len())..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                format!("triggers::{second}")
            } else {
                first
            };
            if !used.is_empty() && used != name {
                uses.insert(used);
            }
        }
        graph.insert(name, uses);
    }
    graph
}

/// A cycle through `start`, if there is one.
fn cycle_from(
    graph: &BTreeMap<String, BTreeSet<String>>,
    start: &str,
    path: &mut Vec<String>,
) -> Option<Vec<String>> {
    let current = path.last().unwrap().clone();
    for next in graph.get(&current).into_iter().flatten() {
        if next == start {
            let mut cycle = path.clone();
            cycle.push(next.clone());
            return Some(cycle);
        }
        if path.contains(next) || !graph.contains_key(next) {
            continue;
        }
        path.push(next.clone());
        if let Some(cycle) = cycle_from(graph, start, path) {
            return Some(cycle);
        }
        path.pop();
    }
    None
}

#[test]
fn host_modules_form_no_cycle() {
    let graph = module_graph();
    assert!(
        graph.len() > 15,
        "the host's modules were not found: {graph:?}"
    );
    assert!(
        graph["state"].contains("calls"),
        "the graph misreads imports: {graph:?}"
    );
    for start in graph.keys() {
        if let Some(cycle) = cycle_from(&graph, start, &mut vec![start.clone()]) {
            panic!("host/src has an import cycle: {}", cycle.join(" → "));
        }
    }
}

#[test]
fn the_leaves_depend_on_no_other_module() {
    let graph = module_graph();
    for leaf in ["response", "policy", "router", "compile_cache", "engine"] {
        assert!(
            graph[leaf].is_empty(),
            "{leaf} should be a leaf but uses {:?}",
            graph[leaf]
        );
    }
}
