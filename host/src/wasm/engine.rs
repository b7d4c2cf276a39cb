//! The wasmtime [`Engine`] every component runs on: the component model, async
//! execution, the pooling allocator sized so no component can take another's
//! slots, epoch interruption and its ticker thread.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances. CPU budgets are counted in ticks, and a
/// guest that computes yields to other requests at least this often.
pub const TICK: Duration = Duration::from_millis(5);

/// Bytes of each linear memory and table kept resident between instances.
const KEEP_RESIDENT_MEMORY_BYTES: usize = 4 << 20;
const KEEP_RESIDENT_TABLE_BYTES: usize = 1 << 20;
/// Slots decommitted together: none. With `PAGEMAP_SCAN` a slot is reset
/// in place and nearly never needs `madvise`, but wasmtime still queues an
/// empty region for each one, so a batch of 32 held up to 31 freed slots
/// out of use until the batch was flushed: every request took a slot other
/// than the one just freed, and more slots kept pages resident (peak RSS
/// 64 MiB against 53 in `loadtest --compare`).
const DECOMMIT_BATCH: usize = 1;
/// What one component instance may take from the pool. With the pool sized
/// as `max_instances` times these, and each component's instances bounded
/// by its gate, no component can exhaust the pool for the others.
const CORE_INSTANCES_PER_INSTANCE: u32 = 16;
const MEMORIES_PER_INSTANCE: u32 = 2;
const TABLES_PER_INSTANCE: u32 = 8;
/// Instances beyond the components' gates: `init`, which changes run one
/// at a time.
const INIT_INSTANCES: u32 = 2;

/// Engine-wide settings, the same for every component.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineSettings {
    /// Component instances alive at once across the host; the pooling
    /// allocator reserves this many slots up front.
    pub max_instances: u32,
    /// Where compiled components are cached between runs.
    pub cache_dir: Option<PathBuf>,
}

/// Builds the engine.
pub fn build(settings: &EngineSettings) -> anyhow::Result<Engine> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);

    // A Rust component has a main module plus a few small adapter modules.
    let n = settings.max_instances.saturating_add(INIT_INSTANCES);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(n)
        .max_core_instances_per_component(CORE_INSTANCES_PER_INSTANCE)
        .max_memories_per_component(MEMORIES_PER_INSTANCE)
        .max_tables_per_component(TABLES_PER_INSTANCE)
        .total_core_instances(n.saturating_mul(CORE_INSTANCES_PER_INSTANCE))
        .total_memories(n.saturating_mul(MEMORIES_PER_INSTANCE))
        .total_tables(n.saturating_mul(TABLES_PER_INSTANCE))
        .total_stacks(n)
        // A slot's dirty pages are found with PAGEMAP_SCAN and reset with
        // memset instead of madvise: madvise in a multi-threaded process
        // means a TLB shootdown on every core, and the next request then
        // faults the pages back in. Kept resident up to these sizes.
        .pagemap_scan(wasmtime::Enabled::Auto)
        .linear_memory_keep_resident(KEEP_RESIDENT_MEMORY_BYTES)
        .table_keep_resident(KEEP_RESIDENT_TABLE_BYTES)
        .decommit_batch_size(DECOMMIT_BATCH)
        // A module without a free slot of its own takes the least recently
        // used slot of another before an untouched one, so the slots in use
        // (and their resident pages) are as many as instances ever alive at
        // once, not that plus up to 100 more.
        .max_unused_warm_slots(0);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));

    if let Some(dir) = &settings.cache_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create cache folder {}", dir.display()))?;
        let mut cache = wasmtime::CacheConfig::new();
        cache.with_directory(dir);
        config.cache(Some(wasmtime::Cache::new(cache)?));
    }
    Engine::new(&config)
        .map_err(anyhow::Error::from)
        .context("cannot configure the wasm engine")
}

/// Advances the engine's epoch every [`TICK`] until dropped. One per engine,
/// never one per request.
pub struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    pub fn start(engine: &Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let engine = engine.clone();
        let thread = std::thread::Builder::new()
            .name("corral-epoch".into())
            .spawn({
                let stop = Arc::clone(&stop);
                move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(TICK);
                        engine.increment_epoch();
                    }
                }
            })
            .expect("spawning the epoch thread");
        EpochTicker {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
