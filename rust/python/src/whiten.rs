//! Binding of `rlhf_fast_kernels::whiten`: masked moments and whitening (any shape).

use numpy::Element;
use pyo3::prelude::*;
use rlhf_fast_kernels::whiten::{self as kernel, WhitenParams};
use rlhf_fast_kernels::Float;

use crate::arrays::{flags, float_kind, output, readonly, shape_of, slice, FloatKind};
use crate::errors::{from_kernel, invalid_argument};

fn moments_typed<T: Float + Element>(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    mask: Option<&Bound<'_, PyAny>>,
    check_finite: bool,
) -> PyResult<(u64, f64, f64)> {
    let shape = shape_of(x, "x")?;
    let xs = readonly::<T>(x, "x", None)?;
    let m = flags(mask, "mask", &shape, "x")?;
    let xs = slice(&xs, "x")?;
    let ms = m.as_ref().map(|m| slice(m, "mask")).transpose()?;
    let r = py.detach(|| kernel::masked_moments(xs, ms, check_finite)).map_err(from_kernel)?;
    Ok((r.count, r.mean, r.m2))
}

/// `(count, mean, m2)` of the masked elements; see `_native.pyi`.
#[pyfunction]
#[pyo3(signature = (x, mask=None, *, check_finite=true))]
pub fn masked_moments(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    mask: Option<&Bound<'_, PyAny>>,
    check_finite: bool,
) -> PyResult<(u64, f64, f64)> {
    match float_kind(x, "x")? {
        FloatKind::F32 => moments_typed::<f32>(py, x, mask, check_finite),
        FloatKind::F64 => moments_typed::<f64>(py, x, mask, check_finite),
    }
}

fn whiten_typed<'py, T: Float + Element>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    mask: Option<&Bound<'py, PyAny>>,
    params: WhitenParams,
    out: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let shape = shape_of(x, "x")?;
    let xs = readonly::<T>(x, "x", None)?;
    let m = flags(mask, "mask", &shape, "x")?;
    let (out_obj, mut out_rw) = output::<T>(py, out, "out", &shape, "x")?;
    let xs = slice(&xs, "x")?;
    let ms = m.as_ref().map(|m| slice(m, "mask")).transpose()?;
    let os = out_rw.as_slice_mut().map_err(|_| invalid_argument("out must be C-contiguous"))?;
    py.detach(|| kernel::masked_whiten(xs, ms, &params, os)).map_err(from_kernel)?;
    Ok(out_obj)
}

/// Masked whitening; see `_native.pyi`.
#[pyfunction]
#[pyo3(signature = (x, mask=None, *, shift_mean=true, unbiased=true, eps=1e-8, out=None, check_finite=true))]
pub fn masked_whiten<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    mask: Option<&Bound<'py, PyAny>>,
    shift_mean: bool,
    unbiased: bool,
    eps: f64,
    out: Option<&Bound<'py, PyAny>>,
    check_finite: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let params = WhitenParams { shift_mean, unbiased, eps, check_finite };
    match float_kind(x, "x")? {
        FloatKind::F32 => whiten_typed::<f32>(py, x, mask, params, out),
        FloatKind::F64 => whiten_typed::<f64>(py, x, mask, params, out),
    }
}
