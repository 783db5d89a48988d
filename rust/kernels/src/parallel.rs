//! The kernels' thread pool: tasks in parallel above a size threshold.
//!
//! The calling thread does the work itself; the pool's workers are only offered
//! to help. Every thread, caller included, claims the next group of tasks from a
//! shared counter, so a worker the OS has not scheduled yet (a busy machine) claims
//! nothing and the call never waits for it to start, only for a worker that is
//! inside a task. With the machine to itself, the workers join within microseconds
//! and share the tasks.
//!
//! The pool is rebuilt after `fork` (a child process inherits no worker threads,
//! e.g. in `DataLoader` workers) and when the thread count changes. Work is split
//! by rows or blocks, never by thread count, and results are combined in task
//! order, so they are bit-identical for any count.

use std::any::Any;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use rayon::{ThreadPool, ThreadPoolBuilder};

/// Below this many elements a kernel runs on the calling thread: waking the pool
/// costs more than the work.
pub const PARALLEL_MIN_ELEMENTS: usize = 1 << 18;

struct PoolState {
    pid: u32,
    /// Threads per call, the caller included: the pool has one fewer.
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

/// Threads the kernels use, the calling one included (the `RLHF_FAST_NUM_THREADS`
/// variable, else every core).
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

/// The helper pool (`threads - 1` workers: the caller is the other thread).
fn pool(threads: usize) -> Option<Arc<ThreadPool>> {
    if threads <= 1 {
        return None;
    }
    let pid = std::process::id();
    let mut state = lock(&POOL);
    let stale = state.as_ref().is_none_or(|s| s.pid != pid || s.threads != threads);
    if stale {
        let pool = ThreadPoolBuilder::new()
            .num_threads(threads - 1)
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

/// Rows (or blocks) per claim in a parallel call: enough claims to balance, few
/// enough to stay cheap.
pub fn rows_per_task(rows: usize, row_len: usize) -> usize {
    let target_elements = 1 << 14;
    (target_elements / row_len.max(1)).clamp(1, rows.max(1))
}

/// One parallel call, shared by the caller and the workers offered to help it.
struct Job {
    /// The next unclaimed index; a claim is `next.fetch_add(1)`.
    next: AtomicUsize,
    /// Workers that have announced themselves and not yet seen `next >= n`.
    active: AtomicUsize,
    n: usize,
    /// The calling thread, parked while it waits for `active == 0`.
    caller: std::thread::Thread,
    /// Set once the caller may park: the worker that brings `active` to 0 then
    /// unparks it.
    parked: AtomicBool,
    /// The caller's closure with its lifetime erased; see `help` for when it is
    /// dereferenced.
    f: *const (dyn Fn(usize) + Sync),
    /// The first panic caught in a worker, re-raised on the caller.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

// SAFETY: `f` points to a `Sync` closure, so calling it from several threads at once
// is allowed; when it may be called at all is argued in `help`. The other fields
// are thread-safe already.
unsafe impl Send for Job {}
unsafe impl Sync for Job {}

/// A worker's side of a call: claim indices until they run out.
///
/// Soundness of the erased lifetime: `f` is dereferenced only for a claimed index
/// `i < n`. All operations on `next` and `active` are `SeqCst`, so they sit in one
/// total order. A worker increments `active` before its first claim and decrements
/// it once, after its last task, on the claim that returns `>= n`. The caller returns
/// (and the closure's borrows end) only after (a) its own last RMW on `next` left
/// it `>= n`, so every claim `< n` precedes that RMW and any later claim returns
/// `>= n`; and then (b) it loaded `active == 0`. A worker that claimed some `i < n`
/// incremented `active` before that claim, hence before (a) and (b); for (b) to
/// read 0 its decrement, which follows its task, must also come before (b) (no
/// decrement precedes its own increment), and the load
/// synchronises with that decrement, so the task's writes are visible to the
/// caller. A worker that increments `active` after (b) can only claim `>= n` and
/// never touches `f`. The `Arc<Job>` keeps the counters themselves alive for
/// workers that start after the caller has returned.
fn help(job: &Job) {
    job.active.fetch_add(1, SeqCst);
    loop {
        let i = job.next.fetch_add(1, SeqCst);
        if i >= job.n {
            break;
        }
        // SAFETY: `i < n`, so the caller is still waiting on `active` (see above).
        let f = unsafe { &*job.f };
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| f(i))) {
            lock(&job.panic).get_or_insert(payload);
            // Nothing more to do: let the rest claim `>= n` and the caller re-raise.
            job.next.fetch_max(job.n, SeqCst);
        }
    }
    // `parked` is read after the decrement and the caller re-reads `active` after
    // setting it (both SeqCst), so either it sees 0 or it is unparked here.
    if job.active.fetch_sub(1, SeqCst) == 1 && job.parked.load(SeqCst) {
        job.caller.unpark();
    }
}

/// Calls `f(i)` for every `i < n`, on the calling thread and on whichever pool
/// workers join in time. Returns once every call has finished; a panic in any
/// call is re-raised here.
fn run_indices(n: usize, threads: usize, f: &(dyn Fn(usize) + Sync)) {
    let Some(pool) = (n > 1).then(|| pool(threads)).flatten() else {
        (0..n).for_each(f);
        return;
    };
    // SAFETY: only the lifetime changes (same fat pointer); `help` argues why the
    // pointer is never dereferenced after this function returns.
    let f_static: *const (dyn Fn(usize) + Sync + 'static) = unsafe { std::mem::transmute(f) };
    let job = Arc::new(Job {
        next: AtomicUsize::new(0),
        active: AtomicUsize::new(0),
        n,
        caller: std::thread::current(),
        parked: AtomicBool::new(false),
        f: f_static,
        panic: Mutex::new(None),
    });
    for _ in 0..(threads - 1).min(n - 1) {
        let job = Arc::clone(&job);
        pool.spawn(move || help(&job));
    }
    let own = catch_unwind(AssertUnwindSafe(|| loop {
        let i = job.next.fetch_add(1, SeqCst);
        if i >= n {
            break;
        }
        f(i);
    }));
    if own.is_err() {
        // Stop the workers early; this RMW leaves `next >= n` as (a) in `help` needs.
        job.next.fetch_max(n, SeqCst);
    }
    // Only workers inside a task (or between announcing and claiming) are waited
    // for. Spin briefly since tasks are short, then sleep: a worker preempted in
    // its task may be queued behind this very thread, and a sleeping caller frees
    // the core for it where `yield_now` would not.
    let mut spins = 0u32;
    while job.active.load(SeqCst) != 0 {
        if spins < 1 << 10 {
            std::hint::spin_loop();
            spins += 1;
            continue;
        }
        job.parked.store(true, SeqCst);
        if job.active.load(SeqCst) != 0 {
            // Wakes on the last worker's unpark (or spuriously: the loop re-checks).
            std::thread::park();
        }
    }
    if let Err(payload) = own {
        resume_unwind(payload);
    }
    let worker_panic = lock(&job.panic).take();
    if let Some(payload) = worker_panic {
        resume_unwind(payload);
    }
}

/// Threads for a call over `elements` elements: one below the threshold.
fn threads_for(elements: usize) -> usize {
    if elements >= PARALLEL_MIN_ELEMENTS {
        num_threads()
    } else {
        1
    }
}

/// Calls `f(i)` for every `i < n` (tasks covering `elements` elements in all) on
/// up to `threads` threads, claiming indices in groups of [`rows_per_task`] so
/// each claim carries enough work.
fn for_each_index(threads: usize, elements: usize, n: usize, f: impl Fn(usize) + Sync) {
    let per_claim = rows_per_task(n, elements / n);
    run_indices(n.div_ceil(per_claim), threads, &|g| {
        (g * per_claim..((g + 1) * per_claim).min(n)).for_each(&f);
    });
}

/// Runs `f` on every task; `elements` is the work they cover together.
pub fn for_each<T: Send>(elements: usize, tasks: Vec<T>, f: impl Fn(T) + Sync) {
    let threads = threads_for(elements);
    if threads <= 1 || tasks.len() <= 1 {
        tasks.into_iter().for_each(f);
        return;
    }
    // Each index is claimed exactly once, so each slot's lock is uncontended; it
    // only hands the task over to whichever thread claimed it.
    let slots: Vec<Mutex<Option<T>>> = tasks.into_iter().map(|t| Mutex::new(Some(t))).collect();
    for_each_index(threads, elements, slots.len(), |i| {
        let task = lock(&slots[i]).take();
        if let Some(t) = task {
            f(t);
        }
    });
}

/// `f(0), ..., f(n - 1)` in index order, whichever thread computed each;
/// `elements` is the work they cover together.
pub fn map<R: Send>(elements: usize, n: usize, f: impl Fn(usize) -> R + Sync) -> Vec<R> {
    let threads = threads_for(elements);
    if threads <= 1 || n <= 1 {
        return (0..n).map(f).collect();
    }
    let slots: Vec<Mutex<Option<R>>> = (0..n).map(|_| Mutex::new(None)).collect();
    for_each_index(threads, elements, n, |i| {
        let r = f(i);
        *lock(&slots[i]) = Some(r);
    });
    slots
        .into_iter()
        .map(|s| s.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner).expect("every index ran"))
        .collect()
}

/// A failure inside row `.0`; when several tasks fail, the lowest row is reported
/// so the message does not depend on scheduling.
pub type RowError = (usize, crate::error::KernelError);

/// Runs `f` on every task (see [`for_each`]) and returns the error of the lowest
/// failing row, if any.
pub fn try_for_each<T: Send>(
    elements: usize,
    tasks: Vec<T>,
    f: impl Fn(T) -> Result<(), RowError> + Sync,
) -> crate::error::Result<()> {
    let lowest: Mutex<Option<RowError>> = Mutex::new(None);
    for_each(elements, tasks, |t| {
        if let Err(e) = f(t) {
            let mut lowest = lock(&lowest);
            if lowest.as_ref().is_none_or(|l| e.0 < l.0) {
                *lowest = Some(e);
            }
        }
    });
    let lowest = lowest.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
    lowest.map_or(Ok(()), |(_, e)| Err(e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{pad_ragged, Selection, Side};
    use crate::gae::{gae, GaeInputs, GaeParams};
    use crate::kl::{kl_shaped_rewards, Estimator, KlInputs, KlParams};
    use crate::layout::Rows;
    use crate::whiten::{masked_moments, masked_whiten, Moments, WhitenParams};

    /// Tests here change the global thread count; they take turns.
    static THREADS: Mutex<()> = Mutex::new(());

    fn with_threads<R>(n: usize, f: impl FnOnce() -> R) -> R {
        let before = *lock(&REQUESTED);
        set_num_threads(n);
        let out = catch_unwind(AssertUnwindSafe(f));
        *lock(&REQUESTED) = before;
        out.unwrap_or_else(|p| resume_unwind(p))
    }

    fn lcg(seed: &mut u64) -> f64 {
        *seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (*seed >> 11) as f64 / (1u64 << 53) as f64
    }

    #[derive(Debug, PartialEq)]
    struct Outputs {
        adv: Vec<u32>,
        ret: Vec<u32>,
        rew: Vec<u32>,
        kl: Vec<u32>,
        moments: Moments,
        white: Vec<u32>,
        padded: Vec<i64>,
        pad_mask: Vec<bool>,
    }

    /// Every parallel kernel on inputs above the threshold; floats as bits.
    fn all_kernels(threads: usize) -> Outputs {
        let (rows, cols) = (600, 1000); // > 2**18 elements, rows not a multiple of a task
        let n = rows * cols;
        let mut seed = 7;
        let a: Vec<f32> = (0..n).map(|_| lcg(&mut seed) as f32 - 0.5).collect();
        let b: Vec<f32> = (0..n).map(|_| lcg(&mut seed) as f32 - 0.5).collect();
        let lens: Vec<usize> = (0..rows).map(|_| 1 + (lcg(&mut seed) * cols as f64) as usize % cols).collect();
        let mask: Vec<u8> = (0..n).map(|i| u8::from(i % cols < lens[i / cols])).collect();
        let scores: Vec<f32> = (0..rows).map(|_| lcg(&mut seed) as f32).collect();
        let layout = Rows::Padded { rows, cols };
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        with_threads(threads, || {
            let (mut adv, mut ret) = (vec![0f32; n], vec![0f32; n]);
            let inp = GaeInputs { rewards: &a, values: &b, mask: Some(&mask), dones: None, bootstrap_values: None, rows: layout };
            gae(&inp, &GaeParams { gamma: 0.99, lam: 0.95, check_finite: true }, &mut adv, &mut ret).unwrap();
            let (mut rew, mut kl) = (vec![0f32; n], vec![0f32; n]);
            let inp = KlInputs { logprobs: &a, ref_logprobs: &b, mask: Some(&mask), scores: &scores, rows: layout };
            let params = KlParams { kl_coef: 0.05, estimator: Estimator::K3, clamp: None, check_finite: true };
            kl_shaped_rewards(&inp, &params, &mut rew, &mut kl).unwrap();
            let moments = masked_moments(&a, Some(&mask), true).unwrap();
            let mut white = vec![0f32; n];
            let params = WhitenParams { shift_mean: true, unbiased: true, eps: 1e-8, check_finite: true };
            masked_whiten(&a, Some(&mask), &params, &mut white).unwrap();
            let offsets: Vec<i64> = (0..=rows as i64).map(|r| r * (cols as i64 / 2)).collect();
            let values: Vec<i64> = (0..offsets[rows]).collect();
            let sel = Selection { offsets: &offsets, indices: None };
            let (r, l) = sel.padded_shape(values.len(), Some(cols)).unwrap();
            let (mut padded, mut pad_mask) = (vec![0i64; r * l], vec![false; r * l]);
            pad_ragged(&values, &sel, -1, Side::Left, l, &mut padded, &mut pad_mask).unwrap();
            Outputs { adv: bits(&adv), ret: bits(&ret), rew: bits(&rew), kl: bits(&kl), moments, white: bits(&white), padded, pad_mask }
        })
    }

    #[test]
    fn every_kernel_gives_the_same_bits_for_any_thread_count() {
        let _turn = lock(&THREADS);
        let one = all_kernels(1);
        assert!(one.adv.iter().any(|&x| x != 0) && one.white.iter().any(|&x| x != 0));
        for threads in [2, 4] {
            assert!(all_kernels(threads) == one, "outputs differ with {threads} threads");
        }
    }

    #[test]
    fn lowest_failing_row_is_reported_for_any_thread_count() {
        let _turn = lock(&THREADS);
        for threads in [1, 2, 4] {
            let err = with_threads(threads, || {
                let tasks: Vec<usize> = (0..1000).collect();
                try_for_each(PARALLEL_MIN_ELEMENTS, tasks, |row| {
                    if row % 300 == 299 {
                        Err((row, crate::error::KernelError::invalid(format!("row {row}"))))
                    } else {
                        Ok(())
                    }
                })
            });
            assert_eq!(err.unwrap_err().to_string(), "row 299");
        }
    }

    #[test]
    fn a_panic_in_a_worker_reaches_the_caller() {
        let _turn = lock(&THREADS);
        let caller = std::thread::current().id();
        let worker_ran = AtomicBool::new(false);
        let payload = with_threads(2, || {
            catch_unwind(AssertUnwindSafe(|| {
                // The caller's task holds on until a worker has joined, so the
                // panicking task surely runs on a worker.
                let f = |_: usize| {
                    if std::thread::current().id() == caller {
                        let start = std::time::Instant::now();
                        while !worker_ran.load(SeqCst) && start.elapsed().as_secs() < 30 {
                            std::thread::yield_now();
                        }
                    } else {
                        worker_ran.store(true, SeqCst);
                        panic!("boom in a worker");
                    }
                };
                // Many claims, so the caller cannot take them all before the worker.
                for_each(PARALLEL_MIN_ELEMENTS, vec![0; 1 << 14], |t: usize| f(t));
            }))
            .unwrap_err()
        });
        assert!(worker_ran.load(SeqCst), "no worker joined within 30 s");
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"boom in a worker"));
    }

    #[test]
    fn a_call_never_waits_for_a_worker_that_has_not_started() {
        let _turn = lock(&THREADS);
        with_threads(2, || {
            // Keep the only worker busy until the call below has returned (or 30 s).
            let release = Arc::new(AtomicBool::new(false));
            let busy = Arc::clone(&release);
            pool(2).unwrap().spawn(move || {
                let start = std::time::Instant::now();
                while !busy.load(SeqCst) && start.elapsed().as_secs() < 30 {
                    std::thread::yield_now();
                }
                busy.store(true, SeqCst);
            });
            let sums = map(PARALLEL_MIN_ELEMENTS, 1000, |i| i * 2);
            assert!(!release.swap(true, SeqCst), "the call waited for the busy worker");
            assert_eq!(sums, (0..1000).map(|i| i * 2).collect::<Vec<_>>());
        });
    }
}
