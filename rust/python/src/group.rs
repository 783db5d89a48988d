//! Binding of `rlhf_fast_kernels::group`: GRPO / RLOO advantages.

use numpy::Element;
use pyo3::prelude::*;
use rlhf_fast_kernels::group::{self as kernel, GroupParams, Normalize};
use rlhf_fast_kernels::Float;

use crate::arrays::{expect_ndim, float_kind, not_empty, output, readonly, slice, FloatKind};
use crate::errors::{from_kernel, invalid_argument};

fn run<'py, T: Float + Element>(
    py: Python<'py>,
    scores: &Bound<'py, PyAny>,
    params: GroupParams,
) -> PyResult<Bound<'py, PyAny>> {
    let shape = expect_ndim(scores, "scores", 1, "[N] (groups laid out one after another)")?;
    not_empty("scores", &shape)?;
    let s = readonly::<T>(scores, "scores", None)?;
    let (out_obj, mut out) = output::<T>(py, None, "out", &shape, "scores")?;
    let s = slice(&s, "scores")?;
    let o = out.as_slice_mut().map_err(|_| invalid_argument("out must be C-contiguous"))?;
    py.detach(|| kernel::group_advantages(s, &params, o)).map_err(from_kernel)?;
    Ok(out_obj)
}

/// GRPO / RLOO advantages; see `_native.pyi`.
#[pyfunction]
#[pyo3(signature = (scores, *, group_size, normalize="std", leave_one_out=false, eps=1e-6, check_finite=true))]
pub fn group_advantages<'py>(
    py: Python<'py>,
    scores: &Bound<'py, PyAny>,
    group_size: i64,
    normalize: &str,
    leave_one_out: bool,
    eps: f64,
    check_finite: bool,
) -> PyResult<Bound<'py, PyAny>> {
    // A negative size cannot be a usize; the kernel refuses 0 with the same words.
    let group_size = usize::try_from(group_size)
        .map_err(|_| invalid_argument(format!("group_size must be >= 1, got {group_size}")))?;
    let normalize = Normalize::parse(normalize).map_err(from_kernel)?;
    let params = GroupParams { group_size, normalize, leave_one_out, eps, check_finite };
    match float_kind(scores, "scores")? {
        FloatKind::F32 => run::<f32>(py, scores, params),
        FloatKind::F64 => run::<f64>(py, scores, params),
    }
}
