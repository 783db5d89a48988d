//! Binding of `rlhf_fast_kernels::gae`: one entry for padded `[B, T]` (+ mask) and
//! packed `[N]` + `cu_seqlens` rows.

use numpy::Element;
use pyo3::prelude::*;
use rlhf_fast_kernels::gae::{self as kernel, GaeInputs, GaeParams};
use rlhf_fast_kernels::Float;

use crate::arrays::{expect_shape, flags, float_kind, output, readonly, slice, FloatKind, RowLayout};
use crate::errors::{from_kernel, invalid_argument};

type Pair<'py> = (Bound<'py, PyAny>, Bound<'py, PyAny>);

struct Args<'a, 'py> {
    rewards: &'a Bound<'py, PyAny>,
    values: &'a Bound<'py, PyAny>,
    mask: Option<&'a Bound<'py, PyAny>>,
    cu_seqlens: Option<&'a Bound<'py, PyAny>>,
    params: GaeParams,
    bootstrap_values: Option<&'a Bound<'py, PyAny>>,
    dones: Option<&'a Bound<'py, PyAny>>,
    advantages_out: Option<&'a Bound<'py, PyAny>>,
    returns_out: Option<&'a Bound<'py, PyAny>>,
}

fn run<'py, T: Float + Element>(py: Python<'py>, a: &Args<'_, 'py>) -> PyResult<Pair<'py>> {
    let layout = RowLayout::parse(a.rewards, "rewards", a.cu_seqlens)?;
    let shape = layout.shape.clone();
    let rewards = readonly::<T>(a.rewards, "rewards", None)?;
    let values = readonly::<T>(a.values, "values", Some("rewards"))?;
    expect_shape(a.values, "values", &shape, "that of rewards")?;
    let mask = flags(a.mask, "mask", &shape, "rewards")?;
    let dones = flags(a.dones, "dones", &shape, "rewards")?;
    let rows = layout.rows()?;
    let bootstrap = a
        .bootstrap_values
        .map(|b| {
            expect_shape(b, "bootstrap_values", &[rows.num_rows()], "one per row")?;
            readonly::<T>(b, "bootstrap_values", Some("rewards"))
        })
        .transpose()?;
    let (adv_obj, mut adv) = output::<T>(py, a.advantages_out, "advantages_out", &shape, "rewards")?;
    let (ret_obj, mut ret) = output::<T>(py, a.returns_out, "returns_out", &shape, "rewards")?;
    let inputs = GaeInputs {
        rewards: slice(&rewards, "rewards")?,
        values: slice(&values, "values")?,
        mask: mask.as_ref().map(|m| slice(m, "mask")).transpose()?,
        dones: dones.as_ref().map(|d| slice(d, "dones")).transpose()?,
        bootstrap_values: bootstrap.as_ref().map(|b| slice(b, "bootstrap_values")).transpose()?,
        rows,
    };
    let adv_s = adv.as_slice_mut().map_err(|_| invalid_argument("advantages_out must be C-contiguous"))?;
    let ret_s = ret.as_slice_mut().map_err(|_| invalid_argument("returns_out must be C-contiguous"))?;
    let params = a.params;
    py.detach(|| kernel::gae(&inputs, &params, adv_s, ret_s)).map_err(from_kernel)?;
    Ok((adv_obj, ret_obj))
}

fn dispatch<'py>(py: Python<'py>, a: &Args<'_, 'py>) -> PyResult<Pair<'py>> {
    match float_kind(a.rewards, "rewards")? {
        FloatKind::F32 => run::<f32>(py, a),
        FloatKind::F64 => run::<f64>(py, a),
    }
}

/// GAE over padded or packed rows; see `_native.pyi`.
#[pyfunction]
#[pyo3(signature = (rewards, values, mask=None, *, cu_seqlens=None, gamma, lam, bootstrap_values=None, dones=None, advantages_out=None, returns_out=None, check_finite=true))]
pub fn gae<'py>(
    py: Python<'py>,
    rewards: &Bound<'py, PyAny>,
    values: &Bound<'py, PyAny>,
    mask: Option<&Bound<'py, PyAny>>,
    cu_seqlens: Option<&Bound<'py, PyAny>>,
    gamma: f64,
    lam: f64,
    bootstrap_values: Option<&Bound<'py, PyAny>>,
    dones: Option<&Bound<'py, PyAny>>,
    advantages_out: Option<&Bound<'py, PyAny>>,
    returns_out: Option<&Bound<'py, PyAny>>,
    check_finite: bool,
) -> PyResult<Pair<'py>> {
    let params = GaeParams { gamma, lam, check_finite };
    dispatch(py, &Args { rewards, values, mask, cu_seqlens, params, bootstrap_values, dones, advantages_out, returns_out })
}
