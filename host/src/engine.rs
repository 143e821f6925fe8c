//! The one wasmtime [`Engine`] of a host, and the epoch ticker that enforces deadlines.
//!
//! Invariants:
//! - One engine per host process: compiled code, the instance pool and the compiler's contexts
//!   all hang off it, and components swapped in later must use the same engine.
//! - Instances come from the pooling allocator when the machine can reserve the address space it
//!   needs (about 42 bits); otherwise from on-demand allocation. Either way a fresh instance
//!   serves each request.
//! - Epoch interruption is on and the epoch advances every [`EPOCH_TICK`], so a guest that never
//!   yields is interrupted within one tick of its deadline.

use anyhow::Context as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Instance slots in the pool. Every instance alive at once, of every component, takes one.
pub const POOL_INSTANCES: u32 = 1000;

/// Bytes of each linear-memory slot kept resident between instances. Bounds the memory a warm
/// slot keeps: at most this much per slot, and only pages a guest actually touched.
pub const KEEP_RESIDENT: usize = 16 << 20;

/// The nice value of the threads that compile and validate components: below the threads that
/// serve requests, so compiling a new version under load takes the CPU requests leave.
pub const BACKGROUND_NICE: i32 = 10;

/// Lowers the calling thread's CPU priority to [`BACKGROUND_NICE`] (on Linux the nice value is
/// per thread). Elsewhere, and when refused, the thread keeps its priority.
pub fn lower_thread_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain system calls on the calling thread's own id; no memory is involved.
        let refused = unsafe {
            let tid = libc::gettid();
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, BACKGROUND_NICE) != 0
        };
        if refused {
            tracing::debug!("cannot lower the priority of a compiling thread");
        }
    }
}

/// Runs wasmtime's parallel compilation (rayon's global pool) at background priority. Called
/// before the first compile; when the pool already exists (a second host in one process) it
/// stays as it is.
pub fn background_compile_threads() {
    let _ = rayon::ThreadPoolBuilder::new()
        .thread_name(|index| format!("agora-compile-{index}"))
        .start_handler(|_| lower_thread_priority())
        .build_global();
}

/// How the engine allocates instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocation {
    /// Pre-reserved slots, reused across instances, with copy-on-write memory images.
    Pooling,
    /// A fresh mapping per instance (machines that can't reserve the pool's address space).
    OnDemand,
}

/// Settings of the engine that depend on the loaded components.
#[derive(Debug, Clone, Copy)]
pub struct EngineSettings {
    /// The largest linear memory any component may grow to, in bytes.
    pub max_memory_bytes: u64,
    /// Force on-demand allocation (tests of the fallback path, constrained machines).
    pub force_on_demand: bool,
}

/// The engine plus what was chosen while building it.
#[derive(Clone)]
pub struct HostEngine {
    /// The wasmtime engine.
    pub engine: Engine,
    /// The allocation strategy in force.
    pub allocation: Allocation,
}

impl HostEngine {
    /// Builds the engine: pooling when the address space allows it, on-demand otherwise.
    pub fn new(settings: EngineSettings) -> anyhow::Result<HostEngine> {
        background_compile_threads();
        if !settings.force_on_demand && can_reserve_pool_address_space() {
            let mut pool = PoolingAllocationConfig::default();
            pool.total_component_instances(POOL_INSTANCES)
                .total_memories(POOL_INSTANCES)
                .total_tables(POOL_INSTANCES * 4)
                .total_stacks(POOL_INSTANCES)
                .total_core_instances(POOL_INSTANCES * 8)
                .max_memory_size(usize::try_from(settings.max_memory_bytes).unwrap_or(usize::MAX))
                // Reset the first KEEP_RESIDENT bytes of a slot in place instead of madvise: a
                // fresh instance per request reuses its slot at once, and madvise would make it
                // fault every page back in. Worth 2x on `bench hello`; see BENCHMARKS.md.
                .linear_memory_keep_resident(KEEP_RESIDENT)
                .table_keep_resident(1 << 16)
                // Find the pages a guest wrote with the kernel's PAGEMAP_SCAN (Linux 6.7+) and
                // reset only those; without it (wasmtime's default, and older kernels) every
                // reset writes the whole accessible memory up to KEEP_RESIDENT, more than a MiB
                // for each request of a shop component.
                .pagemap_scan(Enabled::Auto);
            let mut config = base_config();
            config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
            match Engine::new(&config) {
                Ok(engine) => {
                    tracing::debug!(
                        pagemap_scan = PoolingAllocationConfig::is_pagemap_scan_available(),
                        "instances from the pooling allocator"
                    );
                    return Ok(HostEngine {
                        engine,
                        allocation: Allocation::Pooling,
                    });
                }
                Err(err) => {
                    tracing::warn!(error = %err, "pooling allocator unavailable; allocating instances on demand");
                }
            }
        }
        let engine = Engine::new(&base_config())
            .map_err(anyhow::Error::from)
            .context("cannot create the wasmtime engine")?;
        Ok(HostEngine {
            engine,
            allocation: Allocation::OnDemand,
        })
    }

    /// Starts a thread that advances the engine's epoch every [`EPOCH_TICK`] until the returned
    /// guard is dropped.
    pub fn start_epoch_ticker(&self) -> EpochTicker {
        let stop = Arc::new(AtomicBool::new(false));
        let engine = self.engine.clone();
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("agora-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .ok();
        EpochTicker { stop, thread }
    }
}

fn base_config() -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    if std::env::var_os(PERF_MAP_ENV).is_some_and(|value| value != "0") {
        // `/tmp/perf-<pid>.map` names each guest function for `perf report` (from the
        // component's name section; a stripped build shows indices only).
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    config
}

/// Set (to anything but `0`) to have the engine write a perf map of the guests' code, so that
/// `perf` names their functions: for profiling, not for production (the map only grows).
pub const PERF_MAP_ENV: &str = "AGORA_PERF_MAP";

/// Probes whether the pool's address space (1000 slots of 4 GiB plus guards) can be reserved,
/// by reserving a single memory of that size once.
fn can_reserve_pool_address_space() -> bool {
    const BITS: u32 = 42;
    let mut config = Config::new();
    config.wasm_memory64(true);
    config.memory_reservation(1 << BITS);
    let Ok(engine) = Engine::new(&config) else {
        return false;
    };
    let mut store = wasmtime::Store::new(&engine, ());
    let ty = wasmtime::MemoryType::new64(0, Some(1 << (BITS - 16)));
    wasmtime::Memory::new(&mut store, ty).is_ok()
}

/// Keeps the epoch advancing; stops the ticker thread when dropped.
pub struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
