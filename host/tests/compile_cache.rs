//! A restart with unchanged components loads machine code from the cache instead of compiling.

#![allow(clippy::unwrap_used)]

mod common;

use agora_host::{Host, HostConfig, Origin};
use common::component_table;

/// A manifest serving hello, with its own (empty) data folder under `dir`.
fn hello_config(dir: &std::path::Path) -> HostConfig {
    let manifest = dir.join("agora.toml");
    std::fs::write(
        &manifest,
        component_table("hello", "hello", &["/hello"], ""),
    )
    .unwrap();
    let mut config = HostConfig::new(&manifest);
    config.data_dir = dir.join("data");
    config
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_is_served_from_the_compiled_cache() {
    let dir = tempfile::tempdir().unwrap();
    let config = hello_config(dir.path());
    let cache_dir = config.data_dir.join("compiled");

    let first = Host::load(&config).await.unwrap();
    assert_eq!(first.components()[0].origin, Origin::Compiled);
    let entries: Vec<_> = std::fs::read_dir(&cache_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(
        entries.len(),
        1,
        "one entry, no temporary files: {entries:?}"
    );
    let entry = &entries[0];
    let name = entry.file_name().unwrap().to_str().unwrap();
    assert!(
        name.starts_with(&first.components()[0].digest),
        "named by the content hash: {name}"
    );
    let written = std::fs::metadata(entry).unwrap().modified().unwrap();
    drop(first);

    let second = Host::load(&config).await.unwrap();
    assert_eq!(second.components()[0].origin, Origin::Cache);
    assert_eq!(
        std::fs::metadata(entry).unwrap().modified().unwrap(),
        written,
        "the entry was not rewritten"
    );

    // And the cached code serves.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(second.serve(listener, async {
        let _ = stopped.await;
    }));
    let response = reqwest::get(format!("http://{addr}/hello")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "Hello, world!\n");
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_cache_entry_is_recompiled() {
    let dir = tempfile::tempdir().unwrap();
    let config = hello_config(dir.path());

    let first = Host::load(&config).await.unwrap();
    drop(first);
    let entry = std::fs::read_dir(config.data_dir.join("compiled"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::write(&entry, b"garbage").unwrap();

    let second = Host::load(&config).await.unwrap();
    assert_eq!(second.components()[0].origin, Origin::Compiled);
}
