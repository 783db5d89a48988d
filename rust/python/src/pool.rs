//! Recycled memory for fresh output arrays.
//!
//! Every kernel writes its outputs in full, so they need no zeroing, but fresh
//! memory of a few MB still costs a page fault per page on first touch, which
//! measured several times the kernel itself (a 512 x 2048 float32 GAE: 0.7 ms of
//! work, 2.5 ms of faults for its two outputs). Output arrays are therefore
//! carved from buffers this module keeps: each numpy array owns its buffer
//! through a small base object, and when the array (and every view of it) is
//! gone, the buffer returns here for the next call instead of to the OS.
//!
//! The pool holds at most `RLHF_FAST_POOL_BYTES` (default 256 MiB; 0 turns
//! recycling off). It is only touched with the GIL held.

use std::mem::MaybeUninit;
use std::sync::Mutex;

use numpy::ndarray::{ArrayViewMutD, IxDyn};
use numpy::{Element, PyArrayDyn};
use pyo3::prelude::*;

type Words = Vec<MaybeUninit<u64>>;

const DEFAULT_LIMIT: usize = 256 << 20;
/// Buffers smaller than this are left to the allocator (they fault little).
const MIN_BYTES: usize = 64 << 10;

struct Pool {
    free: Vec<Words>,
    bytes: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool { free: Vec::new(), bytes: 0 });

fn limit() -> usize {
    static LIMIT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| {
        std::env::var("RLHF_FAST_POOL_BYTES").ok().and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_LIMIT)
    })
}

fn lock() -> std::sync::MutexGuard<'static, Pool> {
    POOL.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A buffer of at least `words` words: the smallest pooled one that is not more
/// than twice too big, else a new allocation.
fn take(words: usize) -> Words {
    if words * 8 >= MIN_BYTES {
        let mut pool = lock();
        let best = pool
            .free
            .iter()
            .enumerate()
            .filter(|(_, b)| b.len() >= words && b.len() <= 2 * words)
            .min_by_key(|(_, b)| b.len())
            .map(|(i, _)| i);
        if let Some(i) = best {
            let buf = pool.free.swap_remove(i);
            pool.bytes -= buf.len() * 8;
            return buf;
        }
    }
    let mut buf = Vec::with_capacity(words);
    buf.resize(words, MaybeUninit::uninit());
    buf
}

fn give_back(buf: Words) {
    let bytes = buf.len() * 8;
    if bytes < MIN_BYTES || bytes > limit() {
        return;
    }
    let mut pool = lock();
    // Make room by dropping the oldest buffers.
    while pool.bytes + bytes > limit() && !pool.free.is_empty() {
        let old = pool.free.remove(0);
        pool.bytes -= old.len() * 8;
    }
    pool.bytes += bytes;
    pool.free.push(buf);
}

/// The base object of a pooled array: owns the buffer, returns it when dropped.
#[pyclass(module = "rlhf_fast._native", frozen)]
pub struct PooledBuffer {
    words: Mutex<Words>,
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        let words = std::mem::take(self.words.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner));
        give_back(words);
    }
}

/// A new C-contiguous array of `shape`, uninitialised: the caller must write
/// every element before Python sees it.
pub fn uninit_array<'py, T: Element>(py: Python<'py>, shape: &[usize]) -> PyResult<Bound<'py, PyArrayDyn<T>>> {
    let len: usize = shape.iter().product();
    let words = (len * std::mem::size_of::<T>()).div_ceil(8).max(1);
    let mut buf = take(words);
    let ptr = buf.as_mut_ptr().cast::<T>();
    let owner = Bound::new(py, PooledBuffer { words: Mutex::new(buf) })?;
    // SAFETY: `ptr` points to at least `len` elements of T (8-byte aligned, which
    // covers every element type used here); the heap block does not move when the
    // Vec moves into `owner`, and `owner` stays alive as the array's base, so the
    // memory outlives the array and every view of it.
    unsafe {
        let view = ArrayViewMutD::from_shape_ptr(IxDyn(shape), ptr);
        Ok(PyArrayDyn::borrow_from_array(&view, owner.into_any()))
    }
}
