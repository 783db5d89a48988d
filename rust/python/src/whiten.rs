//! Binding of `rlhf_fast_kernels::whiten`: masked moments and whitening of any shape
//! with a mask, or of the packed rows `x[cu_seqlens[0]:cu_seqlens[-1]]`.

use std::ops::Range;

use numpy::Element;
use pyo3::prelude::*;
use rlhf_fast_kernels::layout::validate_offsets;
use rlhf_fast_kernels::whiten::{self as kernel, WhitenParams};
use rlhf_fast_kernels::Float;

use crate::arrays::{expect_ndim, flags, float_kind, int64, not_empty, output, readonly, shape_of, slice, FloatKind};
use crate::errors::{from_kernel, invalid_argument};

/// The elements that take part: all of `x` (a mask may narrow them), or the span
/// of the packed rows.
fn span(x: &Bound<'_, PyAny>, mask: Option<&Bound<'_, PyAny>>, cu_seqlens: Option<&Bound<'_, PyAny>>) -> PyResult<(Vec<usize>, Range<usize>)> {
    let shape = shape_of(x, "x")?;
    not_empty("x", &shape)?;
    let n = shape.iter().product();
    let Some(cu) = cu_seqlens else { return Ok((shape, 0..n)) };
    if mask.is_some() {
        return Err(invalid_argument("pass either mask (padded layout) or cu_seqlens (packed layout), not both"));
    }
    expect_ndim(x, "x", 1, "[N] when cu_seqlens is given")?;
    let offsets = int64(cu, "cu_seqlens")?;
    let offsets = slice(&offsets, "cu_seqlens")?;
    validate_offsets(offsets, n, "cu_seqlens").map_err(from_kernel)?;
    Ok((shape, offsets[0] as usize..offsets[offsets.len() - 1] as usize))
}

fn moments_typed<T: Float + Element>(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    mask: Option<&Bound<'_, PyAny>>,
    cu_seqlens: Option<&Bound<'_, PyAny>>,
    min_count: u64,
    check_finite: bool,
) -> PyResult<(u64, f64, f64)> {
    let (shape, part) = span(x, mask, cu_seqlens)?;
    let xs = readonly::<T>(x, "x", None)?;
    let m = flags(mask, "mask", &shape, "x")?;
    let xs = &slice(&xs, "x")?[part];
    let ms = m.as_ref().map(|m| slice(m, "mask")).transpose()?;
    let r = py.detach(|| kernel::masked_moments(xs, ms, check_finite)).map_err(from_kernel)?;
    if r.count < min_count {
        let what = if cu_seqlens.is_some() { "cu_seqlens" } else if mask.is_some() { "mask" } else { "x" };
        return Err(invalid_argument(format!(
            "needs at least {min_count} element(s) taking part, but {what} selects {} of x's {}; \
             check that the mask is not all zeros",
            r.count,
            shape.iter().product::<usize>()
        )));
    }
    Ok((r.count, r.mean, r.m2))
}

/// `(count, mean, m2)` of the masked elements; see `_native.pyi`.
#[pyfunction]
#[pyo3(signature = (x, mask=None, *, cu_seqlens=None, min_count=1, check_finite=true))]
pub fn masked_moments(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    mask: Option<&Bound<'_, PyAny>>,
    cu_seqlens: Option<&Bound<'_, PyAny>>,
    min_count: u64,
    check_finite: bool,
) -> PyResult<(u64, f64, f64)> {
    match float_kind(x, "x")? {
        FloatKind::F32 => moments_typed::<f32>(py, x, mask, cu_seqlens, min_count, check_finite),
        FloatKind::F64 => moments_typed::<f64>(py, x, mask, cu_seqlens, min_count, check_finite),
    }
}

fn whiten_typed<'py, T: Float + Element>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    mask: Option<&Bound<'py, PyAny>>,
    cu_seqlens: Option<&Bound<'py, PyAny>>,
    params: WhitenParams,
    out: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let (shape, part) = span(x, mask, cu_seqlens)?;
    let xs = readonly::<T>(x, "x", None)?;
    let m = flags(mask, "mask", &shape, "x")?;
    let (out_obj, mut out_rw) = output::<T>(py, out, "out", &shape, "x")?;
    let xs = &slice(&xs, "x")?[part.clone()];
    let ms = m.as_ref().map(|m| slice(m, "mask")).transpose()?;
    let os = out_rw.as_slice_mut().map_err(|_| invalid_argument("out must be C-contiguous"))?;
    // Elements outside the packed rows are 0, as outside a mask.
    os[..part.start].fill(T::ZERO);
    os[part.end..].fill(T::ZERO);
    let os = &mut os[part];
    py.detach(|| kernel::masked_whiten(xs, ms, &params, os)).map_err(from_kernel)?;
    Ok(out_obj)
}

/// Masked whitening; see `_native.pyi`.
#[pyfunction]
#[pyo3(signature = (x, mask=None, *, cu_seqlens=None, shift_mean=true, unbiased=true, eps=1e-8, out=None, check_finite=true))]
pub fn masked_whiten<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    mask: Option<&Bound<'py, PyAny>>,
    cu_seqlens: Option<&Bound<'py, PyAny>>,
    shift_mean: bool,
    unbiased: bool,
    eps: f64,
    out: Option<&Bound<'py, PyAny>>,
    check_finite: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let params = WhitenParams { shift_mean, unbiased, eps, check_finite };
    match float_kind(x, "x")? {
        FloatKind::F32 => whiten_typed::<f32>(py, x, mask, cu_seqlens, params, out),
        FloatKind::F64 => whiten_typed::<f64>(py, x, mask, cu_seqlens, params, out),
    }
}
