//! Binding of `rlhf_fast_kernels::kl`: KL-shaped rewards, one entry for padded
//! `[B, T]` (+ mask) and packed `[N]` + `cu_seqlens` rows.

use numpy::Element;
use pyo3::prelude::*;
use rlhf_fast_kernels::kl::{self as kernel, Estimator, KlInputs, KlParams};
use rlhf_fast_kernels::Float;

use crate::arrays::{expect_shape, flags, float_kind, output, readonly, slice, FloatKind, RowLayout};
use crate::errors::{from_kernel, invalid_argument};

type Pair<'py> = (Bound<'py, PyAny>, Bound<'py, PyAny>);

struct Args<'a, 'py> {
    logprobs: &'a Bound<'py, PyAny>,
    ref_logprobs: &'a Bound<'py, PyAny>,
    mask: Option<&'a Bound<'py, PyAny>>,
    cu_seqlens: Option<&'a Bound<'py, PyAny>>,
    scores: Option<&'a Bound<'py, PyAny>>,
    params: KlParams,
    rewards_out: Option<&'a Bound<'py, PyAny>>,
    kl_out: Option<&'a Bound<'py, PyAny>>,
}

fn run<'py, T: Float + Element>(py: Python<'py>, a: &Args<'_, 'py>) -> PyResult<Pair<'py>> {
    let layout = RowLayout::parse(a.logprobs, "logprobs", a.cu_seqlens)?;
    let shape = layout.shape.clone();
    let logprobs = readonly::<T>(a.logprobs, "logprobs", None)?;
    let ref_logprobs = readonly::<T>(a.ref_logprobs, "ref_logprobs", Some("logprobs"))?;
    expect_shape(a.ref_logprobs, "ref_logprobs", &shape, "that of logprobs")?;
    let mask = flags(a.mask, "mask", &shape, "logprobs")?;
    let rows = layout.rows()?;
    let given_scores = a
        .scores
        .map(|s| {
            expect_shape(s, "scores", &[rows.num_rows()], "[B], one per row")?;
            readonly::<T>(s, "scores", Some("logprobs"))
        })
        .transpose()?;
    let no_scores = vec![T::ZERO; if given_scores.is_some() { 0 } else { rows.num_rows() }];
    let (rew_obj, mut rew) = output::<T>(py, a.rewards_out, "rewards_out", &shape, "logprobs")?;
    let (kl_obj, mut kl) = output::<T>(py, a.kl_out, "kl_out", &shape, "logprobs")?;
    let inputs = KlInputs {
        logprobs: slice(&logprobs, "logprobs")?,
        ref_logprobs: slice(&ref_logprobs, "ref_logprobs")?,
        mask: mask.as_ref().map(|m| slice(m, "mask")).transpose()?,
        scores: match &given_scores {
            Some(s) => slice(s, "scores")?,
            None => &no_scores,
        },
        rows,
    };
    let rew_s = rew.as_slice_mut().map_err(|_| invalid_argument("rewards_out must be C-contiguous"))?;
    let kl_s = kl.as_slice_mut().map_err(|_| invalid_argument("kl_out must be C-contiguous"))?;
    let params = a.params;
    py.detach(|| kernel::kl_shaped_rewards(&inputs, &params, rew_s, kl_s)).map_err(from_kernel)?;
    Ok((rew_obj, kl_obj))
}

fn dispatch<'py>(py: Python<'py>, a: &Args<'_, 'py>) -> PyResult<Pair<'py>> {
    match float_kind(a.logprobs, "logprobs")? {
        FloatKind::F32 => run::<f32>(py, a),
        FloatKind::F64 => run::<f64>(py, a),
    }
}

fn params(kl_coef: f64, estimator: &str, clamp: Option<f64>, check_finite: bool) -> PyResult<KlParams> {
    let estimator = Estimator::parse(estimator).map_err(from_kernel)?;
    Ok(KlParams { kl_coef, estimator, clamp, check_finite })
}

/// KL shaping over padded or packed rows; see `_native.pyi`.
#[pyfunction]
#[pyo3(signature = (logprobs, ref_logprobs, mask=None, scores=None, *, cu_seqlens=None, kl_coef, estimator="k1", clamp=None, rewards_out=None, kl_out=None, check_finite=true))]
pub fn kl_shaped_rewards<'py>(
    py: Python<'py>,
    logprobs: &Bound<'py, PyAny>,
    ref_logprobs: &Bound<'py, PyAny>,
    mask: Option<&Bound<'py, PyAny>>,
    scores: Option<&Bound<'py, PyAny>>,
    cu_seqlens: Option<&Bound<'py, PyAny>>,
    kl_coef: f64,
    estimator: &str,
    clamp: Option<f64>,
    rewards_out: Option<&Bound<'py, PyAny>>,
    kl_out: Option<&Bound<'py, PyAny>>,
    check_finite: bool,
) -> PyResult<Pair<'py>> {
    let params = params(kl_coef, estimator, clamp, check_finite)?;
    dispatch(py, &Args { logprobs, ref_logprobs, mask, cu_seqlens, scores, params, rewards_out, kl_out })
}
