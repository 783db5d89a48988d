//! Per-token KL estimates and KL-shaped rewards.
//!
//! With `lr = logprobs - ref_logprobs` (log-ratio of policy to reference):
//! `k1 = lr`, `abs = |lr|`, `k2 = lr^2 / 2`, `k3 = exp(-lr) - 1 + lr`
//! (Schulman's estimators; k3 is unbiased and non-negative). An optional clamp
//! bounds the estimate to `[-clamp, clamp]`. Then
//! `reward_t = -kl_coef * kl_t` on tokens that take part, plus the row's score on
//! its **last** token that takes part (never on the padding after it); 0 elsewhere.

use crate::error::{KernelError, Result};
use crate::discounted::last_nonzero;
use crate::float::Float;
use crate::gae::check_len;
use crate::layout::{describe_index, split_rows_mut, Rows};
use crate::parallel::{self, RowError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Estimator {
    K1,
    Abs,
    K2,
    K3,
}

impl Estimator {
    pub const NAMES: &'static str = "'k1', 'abs', 'k2' or 'k3'";

    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "k1" => Ok(Self::K1),
            "abs" => Ok(Self::Abs),
            "k2" => Ok(Self::K2),
            "k3" => Ok(Self::K3),
            other => Err(KernelError::invalid(format!(
                "estimator must be one of {}, got '{other}'",
                Self::NAMES
            ))),
        }
    }

    /// The KL estimate for one log-ratio.
    #[inline]
    pub fn estimate<T: Float>(self, lr: T) -> T {
        match self {
            Self::K1 => lr,
            Self::Abs => lr.abs(),
            Self::K2 => T::HALF * lr * lr,
            Self::K3 => (-lr).exp_vec() - T::ONE + lr,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct KlParams {
    pub kl_coef: f64,
    pub estimator: Estimator,
    pub clamp: Option<f64>,
    pub check_finite: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct KlInputs<'a, T> {
    pub logprobs: &'a [T],
    pub ref_logprobs: &'a [T],
    pub mask: Option<&'a [u8]>,
    pub scores: &'a [T],
    pub rows: Rows<'a>,
}

fn validate<T: Float>(inp: &KlInputs<'_, T>, p: &KlParams, rew: usize, kl: usize) -> Result<()> {
    if !p.kl_coef.is_finite() || p.kl_coef < 0.0 {
        return Err(KernelError::invalid(format!(
            "kl_coef must be a finite number >= 0, got {}",
            p.kl_coef
        )));
    }
    if let Some(c) = p.clamp {
        if c.is_nan() || c <= 0.0 {
            return Err(KernelError::invalid(format!("clamp must be > 0 (or None), got {c}")));
        }
    }
    if matches!(inp.rows, Rows::Packed { .. }) && inp.mask.is_some() {
        return Err(KernelError::invalid("mask cannot be combined with cu_seqlens (packed rows)"));
    }
    let n = inp.logprobs.len();
    inp.rows.validate(n)?;
    check_len("ref_logprobs", inp.ref_logprobs.len(), n, "one per logprob")?;
    if let Some(m) = inp.mask {
        check_len("mask", m.len(), n, "one per logprob")?;
    }
    check_len("scores", inp.scores.len(), inp.rows.num_rows(), "one per row")?;
    check_len("rewards_out", rew, n, "one per logprob")?;
    check_len("kl_out", kl, n, "one per logprob")?;
    Ok(())
}

/// Writes the shaped rewards and the per-token KL (every element is written).
pub fn kl_shaped_rewards<T: Float>(
    inp: &KlInputs<'_, T>,
    params: &KlParams,
    rewards: &mut [T],
    kl: &mut [T],
) -> Result<()> {
    validate(inp, params, rewards.len(), kl.len())?;
    let ranges = inp.rows.ranges();
    let (rew_rows, rew_gaps) = split_rows_mut(rewards, &ranges);
    let (kl_rows, kl_gaps) = split_rows_mut(kl, &ranges);
    for gap in rew_gaps.into_iter().chain(kl_gaps) {
        gap.fill(T::ZERO);
    }
    let tasks: Vec<_> = rew_rows.into_iter().zip(kl_rows).enumerate().collect();
    parallel::try_for_each(inp.logprobs.len(), tasks, |(row, (rew, kl))| {
        shape_row(inp, params, row, ranges[row], rew, kl)
    })
}

crate::simd::multiversion! {
    /// Shapes one row (see the module docs).
    fn shape_row<T: Float>(
        inp: &KlInputs<'_, T>,
        params: &KlParams,
        row: usize,
        range: (usize, usize),
        rew: &mut [T],
        kl: &mut [T],
    ) -> std::result::Result<(), RowError> => shape_row_impl
}

#[inline(always)]
fn shape_row_impl<T: Float, const FUSED: bool>(
    inp: &KlInputs<'_, T>,
    params: &KlParams,
    row: usize,
    range: (usize, usize),
    rew: &mut [T],
    kl: &mut [T],
) -> std::result::Result<(), RowError> {
    // One monomorphised loop per estimator keeps the inner loop branch-free.
    match params.estimator {
        Estimator::K1 => shape_with(inp, params, row, range, rew, kl, |lr: T| lr),
        Estimator::Abs => shape_with(inp, params, row, range, rew, kl, |lr: T| lr.abs()),
        Estimator::K2 => shape_with(inp, params, row, range, rew, kl, |lr: T| T::HALF * lr * lr),
        Estimator::K3 => {
            shape_with(inp, params, row, range, rew, kl, |lr: T| (-lr).exp_vec_if::<FUSED>() - T::ONE + lr)
        }
    }
}

#[inline(always)]
fn shape_with<T: Float>(
    inp: &KlInputs<'_, T>,
    params: &KlParams,
    row: usize,
    (start, end): (usize, usize),
    rew: &mut [T],
    kl: &mut [T],
    estimate: impl Fn(T) -> T,
) -> std::result::Result<(), RowError> {
    let lp = &inp.logprobs[start..end];
    let rp = &inp.ref_logprobs[start..end];
    let n = lp.len();
    assert!(rp.len() == n && rew.len() == n && kl.len() == n);
    let neg_coef = T::from_f64(-params.kl_coef);
    // Without a clamp the bounds are infinite: one branch-free loop either way.
    let (lo, hi) = params.clamp.map_or((T::from_f64(f64::NEG_INFINITY), T::from_f64(f64::INFINITY)), |c| {
        (T::from_f64(-c), T::from_f64(c))
    });
    // An OR of per-element checks (not a float sum: float reductions do not
    // vectorise without reassociation).
    let mut bad = false;
    let last_end = match inp.mask.map(|m| &m[start..end]) {
        Some(mask) => {
            assert!(mask.len() == n);
            let mut seen = 0u8;
            for t in 0..n {
                let m = mask[t];
                seen |= m;
                let e = estimate(lp[t] - rp[t]).clamp_to(lo, hi);
                let on = m != 0;
                kl[t] = if on { e } else { T::ZERO };
                rew[t] = if on { neg_coef * e } else { T::ZERO };
                bad |= !(kl[t].is_finite() & rew[t].is_finite());
            }
            if seen > 1 {
                let i = mask.iter().position(|&m| m > 1).expect("seen a flag > 1");
                return Err((
                    row,
                    KernelError::invalid(format!(
                        "mask must hold only 0 and 1, but mask{} = {}",
                        describe_index(&inp.rows, start + i),
                        mask[i]
                    )),
                ));
            }
            last_nonzero(mask).map_or(0, |t| t + 1)
        }
        None => {
            for t in 0..n {
                let e = estimate(lp[t] - rp[t]).clamp_to(lo, hi);
                kl[t] = e;
                rew[t] = neg_coef * e;
                bad |= !(e.is_finite() & rew[t].is_finite());
            }
            n
        }
    };
    if let Some(t) = last_end.checked_sub(1) {
        rew[t] = rew[t] + inp.scores[row];
        bad |= !rew[t].is_finite();
    }
    if params.check_finite && bad {
        return Err((row, non_finite(inp, row, start, end)));
    }
    Ok(())
}

fn non_finite<T: Float>(inp: &KlInputs<'_, T>, row: usize, start: usize, end: usize) -> KernelError {
    let takes_part = |i: usize| inp.mask.is_none_or(|m| m[i] != 0);
    for (name, data) in [("logprobs", inp.logprobs), ("ref_logprobs", inp.ref_logprobs)] {
        if let Some(i) = (start..end).find(|&i| takes_part(i) && !data[i].is_finite()) {
            return KernelError::non_finite(format!(
                "{name}{} is {} (a position inside the mask); pass finite inputs, or check_finite=False to skip this check",
                describe_index(&inp.rows, i),
                data[i]
            ));
        }
    }
    if !inp.scores[row].is_finite() {
        return KernelError::non_finite(format!(
            "scores[{row}] is {}; pass finite inputs, or check_finite=False to skip this check",
            inp.scores[row]
        ));
    }
    KernelError::non_finite(format!(
        "the KL estimate of row {row} overflowed (exp of a large negative log-ratio under 'k3'?); pass clamp= to bound it"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_lands_on_last_masked_token_and_estimators_match_closed_forms() {
        let lp = [-1.0f64, -0.5, -2.0, -0.1];
        let rp = [-1.5f64, -0.5, -1.0, -0.3];
        let mask = [0u8, 1, 1, 0];
        let scores = [10.0f64];
        for (est, f) in [
            (Estimator::K1, (|x: f64| x) as fn(f64) -> f64),
            (Estimator::Abs, |x: f64| x.abs()),
            (Estimator::K2, |x: f64| 0.5 * x * x),
            (Estimator::K3, |x: f64| (-x).exp() - 1.0 + x),
        ] {
            let (mut r, mut k) = ([f64::NAN; 4], [f64::NAN; 4]);
            let inp = KlInputs { logprobs: &lp, ref_logprobs: &rp, mask: Some(&mask), scores: &scores, rows: Rows::Padded { rows: 1, cols: 4 } };
            let p = KlParams { kl_coef: 0.2, estimator: est, clamp: None, check_finite: true };
            kl_shaped_rewards(&inp, &p, &mut r, &mut k).unwrap();
            assert_eq!(k[0], 0.0);
            assert_eq!(k[3], 0.0);
            assert!((k[2] - f(-1.0)).abs() < 1e-12);
            assert!((r[1] - (-0.2 * f(0.0))).abs() < 1e-12);
            assert!((r[2] - (-0.2 * f(-1.0) + 10.0)).abs() < 1e-12, "score on last masked token");
            assert_eq!(r[3], 0.0, "no score on the pad after the last token");
        }
    }

    #[test]
    fn clamp_bounds_the_estimate() {
        let (mut r, mut k) = ([0.0f32; 2], [0.0f32; 2]);
        let inp = KlInputs { logprobs: &[5.0, -5.0], ref_logprobs: &[0.0, 0.0], mask: None, scores: &[0.0], rows: Rows::Packed { offsets: &[0, 2] } };
        let p = KlParams { kl_coef: 1.0, estimator: Estimator::K1, clamp: Some(2.0), check_finite: true };
        kl_shaped_rewards(&inp, &p, &mut r, &mut k).unwrap();
        assert_eq!(k, [2.0, -2.0]);
    }

    #[test]
    fn rejects_unknown_estimator_and_negative_coef() {
        assert!(Estimator::parse("k4").unwrap_err().message.contains("estimator"));
        let (mut r, mut k) = ([0.0f32; 1], [0.0f32; 1]);
        let inp = KlInputs { logprobs: &[0.0], ref_logprobs: &[0.0], mask: None, scores: &[0.0], rows: Rows::Packed { offsets: &[0, 1] } };
        let p = KlParams { kl_coef: -1.0, estimator: Estimator::K1, clamp: None, check_finite: true };
        assert!(kl_shaped_rewards(&inp, &p, &mut r, &mut k).unwrap_err().message.contains("kl_coef"));
    }
}
