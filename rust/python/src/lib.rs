//! `rlhf_fast._native`: the Python face of `rlhf_fast_kernels`.
//!
//! This crate only converts and dispatches: it turns numpy arrays into slices
//! (see `arrays`), checks what the kernels cannot see (dtypes, dimensions,
//! contiguity), releases the GIL around every kernel and maps kernel errors to
//! the exception classes of `errors`. One file per kernel family, as in the core.

mod arrays;
mod batch;
mod errors;
mod gae;
mod group;
mod kl;
mod pool;
mod whiten;

use pyo3::prelude::*;

/// Threads the kernels use for rows in parallel.
#[pyfunction]
fn get_num_threads() -> usize {
    rlhf_fast_kernels::parallel::num_threads()
}

/// Sets the kernel thread count (`n >= 1`). Results do not depend on it.
#[pyfunction]
fn set_num_threads(n: i64) -> PyResult<()> {
    if n < 1 {
        return Err(errors::invalid_argument(format!("n must be >= 1, got {n}")));
    }
    rlhf_fast_kernels::parallel::set_num_threads(n as usize);
    Ok(())
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    errors::register(m)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(gae::gae, m)?)?;
    m.add_function(wrap_pyfunction!(kl::kl_shaped_rewards, m)?)?;
    m.add_function(wrap_pyfunction!(whiten::masked_moments, m)?)?;
    m.add_function(wrap_pyfunction!(whiten::masked_whiten, m)?)?;
    m.add_function(wrap_pyfunction!(group::group_advantages, m)?)?;
    m.add_function(wrap_pyfunction!(batch::pad_ragged, m)?)?;
    m.add_function(wrap_pyfunction!(batch::permutation, m)?)?;
    m.add_function(wrap_pyfunction!(batch::minibatch_indices, m)?)?;
    Ok(())
}
