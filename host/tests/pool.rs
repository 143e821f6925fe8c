//! The pooling allocator's reset of a fresh instance's memory: a slot is reset in place, and
//! only the pages its guest wrote are rewritten (the kernel's `PAGEMAP_SCAN`). Without the
//! scan, every reset rewrites the slot's whole accessible memory and keeps all of it resident,
//! which cost the fresh cached read a third of its throughput (BENCHMARKS.md). Real component
//! (hello), real HTTP; the slots are read from this process's own `/proc/self/smaps`.
//!
//! Its own test binary: the slots are found by the compiled components they map, and no other
//! host may map any in this process.

#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)]

mod common;

use common::{TestHost, component_table};

/// Fresh instances served one after another before the slots are read.
const REQUESTS: usize = 20;

/// The most a slot may keep written: more than hello writes per request (4 pages of 4 KiB
/// measured), far less than its memory (1 088 KiB), all of which a whole reset rewrites.
const MOST_WRITTEN_KIB: u64 = 128;

#[tokio::test(flavor = "multi_thread")]
async fn a_fresh_instance_rewrites_only_the_pages_its_guest_wrote() {
    if !wasmtime::PoolingAllocationConfig::is_pagemap_scan_available() {
        eprintln!("skipped: this kernel has no PAGEMAP_SCAN (Linux 6.7+), so every reset is whole");
        return;
    }
    let host = TestHost::start(&component_table("hello", "hello", &["/..."], "")).await;
    for _ in 0..REQUESTS {
        let response = reqwest::get(host.url("/")).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "Hello, world!\n");
    }
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let slots = slots(&smaps);
    eprintln!("slots after {REQUESTS} fresh instances: {slots:?}");
    assert!(
        !slots.is_empty(),
        "no memory slot maps a compiled component: is the pooling allocator in use?"
    );
    for slot in &slots {
        assert!(
            slot.written_kib <= MOST_WRITTEN_KIB,
            "a slot of {} KiB keeps {} KiB written after {REQUESTS} fresh instances: its \
             whole memory is rewritten at each reset",
            slot.kib,
            slot.written_kib
        );
    }
}

/// One linear-memory slot: a run of adjacent read-write mappings around a compiled
/// component's memory image.
#[derive(Debug)]
struct Slot {
    kib: u64,
    written_kib: u64,
}

/// One mapping of `/proc/self/smaps`.
struct Mapping {
    start: u64,
    end: u64,
    writable: bool,
    image: bool,
    anonymous_kib: u64,
}

fn slots(smaps: &str) -> Vec<Slot> {
    let mut mappings: Vec<Mapping> = Vec::new();
    for line in smaps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let Some(range) = fields
            .first()
            .filter(|f| f.contains('-') && fields.len() >= 5)
        {
            let (start, end) = range.split_once('-').unwrap();
            mappings.push(Mapping {
                start: u64::from_str_radix(start, 16).unwrap(),
                end: u64::from_str_radix(end, 16).unwrap(),
                writable: fields[1].starts_with("rw"),
                image: fields.get(5).is_some_and(|path| path.ends_with(".cwasm")),
                anonymous_kib: 0,
            });
        } else if let (Some(&"Anonymous:"), Some(kib)) = (fields.first(), fields.get(1))
            && let Some(mapping) = mappings.last_mut()
        {
            mapping.anonymous_kib = kib.parse().unwrap();
        }
    }
    // Runs of adjacent writable mappings; the slots are those holding an image.
    let mut slots = Vec::new();
    let mut run: Vec<&Mapping> = Vec::new();
    for mapping in mappings.iter().chain(std::iter::once(&Mapping {
        start: 0,
        end: 0,
        writable: false,
        image: false,
        anonymous_kib: 0,
    })) {
        let adjacent = run.last().is_some_and(|last| last.end == mapping.start);
        if !(mapping.writable && adjacent) {
            if run.iter().any(|m| m.image) {
                slots.push(Slot {
                    kib: (run.last().unwrap().end - run[0].start) / 1024,
                    written_kib: run.iter().map(|m| m.anonymous_kib).sum(),
                });
            }
            run.clear();
        }
        if mapping.writable {
            run.push(mapping);
        }
    }
    slots
}
