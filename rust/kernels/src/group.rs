//! Group-relative advantages (GRPO, RLOO) for scores laid out group by group.
//!
//! For a group `s_1..s_G` with mean `mu` and unbiased std `sigma`:
//! GRPO: `A_i = (s_i - mu) / (sigma + eps)`;
//! RLOO: baseline is the mean of the other `G - 1` scores, so
//! `A_i = s_i - (G mu - s_i) / (G - 1) = G / (G - 1) * (s_i - mu)`,
//! optionally divided by `sigma + eps` too.

use crate::error::{KernelError, Result};
use crate::float::{any_non_finite, Float};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Normalize {
    Std,
    None,
}

impl Normalize {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "std" => Ok(Self::Std),
            "none" => Ok(Self::None),
            other => Err(KernelError::invalid(format!(
                "normalize must be 'std' or 'none', got '{other}'"
            ))),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct GroupParams {
    pub group_size: usize,
    pub normalize: Normalize,
    pub leave_one_out: bool,
    pub eps: f64,
    pub check_finite: bool,
}

pub fn group_advantages<T: Float>(scores: &[T], p: &GroupParams, out: &mut [T]) -> Result<()> {
    let n = scores.len();
    let g = p.group_size;
    if n == 0 {
        return Err(KernelError::invalid("scores must not be empty"));
    }
    if g < 1 {
        return Err(KernelError::invalid(format!("group_size must be >= 1, got {g}")));
    }
    if n % g != 0 {
        return Err(KernelError::invalid(format!(
            "group_size must divide the number of scores: {n} scores are not a whole number of groups of {g}"
        )));
    }
    if g == 1 && p.leave_one_out {
        return Err(KernelError::invalid(
            "leave_one_out needs group_size >= 2: a group of 1 has no other scores to form a baseline",
        ));
    }
    if g == 1 && p.normalize == Normalize::Std {
        return Err(KernelError::invalid(
            "normalize='std' needs group_size >= 2: a group of 1 has no spread (use normalize='none')",
        ));
    }
    if p.eps.is_nan() || p.eps < 0.0 {
        return Err(KernelError::invalid(format!("eps must be >= 0, got {}", p.eps)));
    }
    if out.len() != n {
        return Err(KernelError::invalid(format!("out must have {n} elements, got {}", out.len())));
    }
    if p.check_finite {
        if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
            return Err(KernelError::non_finite(format!(
                "scores[{i}] is {}; pass finite scores, or check_finite=False to skip this check",
                scores[i]
            )));
        }
    }
    let gf = g as f64;
    let loo_factor = if p.leave_one_out { gf / (gf - 1.0) } else { 1.0 };
    for (s, o) in scores.chunks_exact(g).zip(out.chunks_exact_mut(g)) {
        let mean = s.iter().map(|v| v.to_f64()).sum::<f64>() / gf;
        let scale = match p.normalize {
            Normalize::None => 1.0,
            Normalize::Std => {
                let var = s.iter().map(|v| (v.to_f64() - mean).powi(2)).sum::<f64>() / (gf - 1.0);
                1.0 / (var.sqrt() + p.eps)
            }
        };
        for (&v, o) in s.iter().zip(o.iter_mut()) {
            *o = T::from_f64(loo_factor * (v.to_f64() - mean) * scale);
        }
    }
    if p.check_finite && any_non_finite(out) {
        return Err(KernelError::non_finite(
            "a group has zero spread and eps=0, so normalize='std' divided by 0; pass eps > 0",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpo_and_rloo() {
        let s = [1.0f64, 2.0, 3.0, 5.0, 5.0, 5.0];
        let mut out = [0.0; 6];
        let p = GroupParams { group_size: 3, normalize: Normalize::Std, leave_one_out: false, eps: 0.0, check_finite: false };
        group_advantages(&s, &p, &mut out).unwrap();
        assert_eq!(&out[..3], &[-1.0, 0.0, 1.0]);
        let p = GroupParams { normalize: Normalize::None, leave_one_out: true, ..p };
        group_advantages(&s, &p, &mut out).unwrap();
        // s_0 - mean(others) = 1 - 2.5
        assert!((out[0] + 1.5).abs() < 1e-12);
        assert_eq!(&out[3..], &[0.0, 0.0, 0.0]);
    }
}
