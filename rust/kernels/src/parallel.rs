//! The kernels' thread pool: rows in parallel above a size threshold.
//!
//! The pool is rebuilt after `fork` (a child process inherits no worker threads,
//! e.g. in `DataLoader` workers) and when the thread count changes. Work is split by
//! rows, never by thread count, so results are bit-identical for any count.

use std::sync::{Arc, Mutex};

use rayon::{ThreadPool, ThreadPoolBuilder};

/// Below this many elements a kernel runs on the calling thread: waking the pool
/// costs more than the work.
pub const PARALLEL_MIN_ELEMENTS: usize = 1 << 18;

struct PoolState {
    pid: u32,
    threads: usize,
    pool: Arc<ThreadPool>,
}

static POOL: Mutex<Option<PoolState>> = Mutex::new(None);
static REQUESTED: Mutex<Option<usize>> = Mutex::new(None);

fn default_threads() -> usize {
    if let Some(n) = std::env::var("RLHF_FAST_NUM_THREADS").ok().and_then(|s| s.parse().ok()) {
        if n >= 1 {
            return n;
        }
    }
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// Threads the kernels use (the `RLHF_FAST_NUM_THREADS` variable, else every core).
pub fn num_threads() -> usize {
    lock(&REQUESTED).unwrap_or_else(default_threads)
}

/// Sets the thread count; `n` is clamped to at least 1.
pub fn set_num_threads(n: usize) {
    *lock(&REQUESTED) = Some(n.max(1));
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these locks leaves plain data behind; keep going.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn pool() -> Option<Arc<ThreadPool>> {
    let threads = num_threads();
    if threads <= 1 {
        return None;
    }
    let pid = std::process::id();
    let mut state = lock(&POOL);
    let stale = state.as_ref().is_none_or(|s| s.pid != pid || s.threads != threads);
    if stale {
        let pool = ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("rlhf-fast-{i}"))
            .build()
            .ok()?;
        if let Some(old) = state.take() {
            if old.pid != pid {
                // Its threads do not exist in this (forked) process; dropping it
                // would wait on them forever.
                std::mem::forget(old.pool);
            }
        }
        *state = Some(PoolState { pid, threads, pool: Arc::new(pool) });
    }
    state.as_ref().map(|s| Arc::clone(&s.pool))
}

/// Runs `f` inside the pool when `elements` is large enough and more than one
/// thread is allowed; otherwise on the calling thread. Rayon calls inside `f`
/// then use that pool (or run serially outside any pool with one thread).
pub fn run<R: Send>(elements: usize, f: impl FnOnce(bool) -> R + Send) -> R {
    if elements >= PARALLEL_MIN_ELEMENTS {
        if let Some(pool) = pool() {
            return pool.install(|| f(true));
        }
    }
    f(false)
}

/// Rows per parallel task: enough tasks to balance, few enough to stay cheap.
pub fn rows_per_task(rows: usize, row_len: usize) -> usize {
    let target_elements = 1 << 14;
    (target_elements / row_len.max(1)).clamp(1, rows.max(1))
}

/// A failure inside row `.0`; when several tasks fail, the lowest row is reported
/// so the message does not depend on scheduling.
pub type RowError = (usize, crate::error::KernelError);

/// Runs `f` on every task, in parallel when `parallel`, and returns the error of
/// the lowest failing row, if any.
pub fn try_for_each<T: Send>(
    tasks: Vec<T>,
    parallel: bool,
    f: impl Fn(T) -> Result<(), RowError> + Sync + Send,
) -> crate::error::Result<()> {
    use rayon::prelude::*;
    let first = |a: Option<RowError>, b: Option<RowError>| match (a, b) {
        (Some(x), Some(y)) => Some(if x.0 <= y.0 { x } else { y }),
        (x, None) => x,
        (None, y) => y,
    };
    let failure = if parallel {
        tasks.into_par_iter().map(|t| f(t).err()).reduce(|| None, first)
    } else {
        tasks.into_iter().map(|t| f(t).err()).fold(None, first)
    };
    failure.map_or(Ok(()), |(_, e)| Err(e))
}
