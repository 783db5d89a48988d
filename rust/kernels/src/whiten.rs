//! Masked moments and whitening.
//!
//! Moments accumulate in `f64` over fixed blocks of [`BLOCK`] elements (two passes
//! inside each block while it sits in cache: sum, then squared deviations), and
//! blocks are merged in order with Chan's pairwise formula. The block boundaries
//! do not depend on the thread count, so neither do the bits of the result.

use crate::error::{KernelError, Result};
use crate::float::Float;
use crate::gae::check_len;
use crate::parallel;

/// Elements per moment block (a block's count fits a u32).
pub const BLOCK: usize = 4096;

/// Count, mean and sum of squared deviations from the mean (`m2`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Moments {
    pub count: u64,
    pub mean: f64,
    pub m2: f64,
}

impl Moments {
    pub const EMPTY: Self = Self { count: 0, mean: f64::NAN, m2: f64::NAN };

    /// Chan et al.'s pairwise merge of two sets of moments.
    #[must_use]
    pub fn merge(self, other: Self) -> Self {
        if self.count == 0 {
            return other;
        }
        if other.count == 0 {
            return self;
        }
        let (na, nb) = (self.count as f64, other.count as f64);
        let n = na + nb;
        let delta = other.mean - self.mean;
        Self {
            count: self.count + other.count,
            mean: self.mean + delta * nb / n,
            m2: self.m2 + other.m2 + delta * delta * na * nb / n,
        }
    }

    /// `m2 / (count - 1)` when `unbiased`, else `m2 / count`.
    pub fn variance(&self, unbiased: bool) -> f64 {
        let denom = if unbiased { self.count.saturating_sub(1) } else { self.count };
        self.m2 / denom as f64
    }
}

crate::simd::multiversion! {
    /// Moments of one block and the OR of its mask bytes.
    fn block_moments<T: Float>(x: &[T], mask: Option<&[u8]>) -> (Moments, u8) => block_moments_impl
}

/// Lanes of independent accumulators: sums over fixed-width chunks vectorise,
/// where one running float sum would not (float addition does not reassociate).
const LANES: usize = 8;

#[inline(always)]
fn block_moments_impl<T: Float, const FUSED: bool>(x: &[T], mask: Option<&[u8]>) -> (Moments, u8) {
    // The mask's statistics first: byte-wide OR and count vectorise on their own.
    let (count, flags) = match mask {
        Some(m) => (m.iter().map(|&v| u32::from(v != 0)).sum::<u32>(), m.iter().fold(0u8, |f, &v| f | v)),
        None => (x.len() as u32, 0),
    };
    if count == 0 {
        return (Moments::EMPTY, flags);
    }
    let sum = lane_sum(x, mask, T::to_f64);
    let mean = sum / f64::from(count);
    let m2 = lane_sum(x, mask, |v| {
        let d = v.to_f64() - mean;
        d * d
    });
    (Moments { count: u64::from(count), mean, m2 }, flags)
}

/// Sum of `f(x)` over the masked elements, in float64 lanes.
#[inline(always)]
fn lane_sum<T: Float>(x: &[T], mask: Option<&[u8]>, f: impl Fn(T) -> f64) -> f64 {
    let mut acc = [0.0f64; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    match mask {
        Some(m) => {
            let m_chunks = m.chunks_exact(LANES);
            let m_tail = m_chunks.remainder();
            for (xs, ms) in chunks.zip(m_chunks) {
                for i in 0..LANES {
                    acc[i] += if ms[i] != 0 { f(xs[i]) } else { 0.0 };
                }
            }
            for (&v, &mv) in tail.iter().zip(m_tail) {
                acc[0] += if mv != 0 { f(v) } else { 0.0 };
            }
        }
        None => {
            for xs in chunks {
                for i in 0..LANES {
                    acc[i] += f(xs[i]);
                }
            }
            for &v in tail {
                acc[0] += f(v);
            }
        }
    }
    acc.iter().sum()
}

/// Moments of the elements where `mask` is 1 (all elements when `mask` is None).
/// Returns [`Moments::EMPTY`] when nothing is masked in; the caller decides
/// whether that is an error.
pub fn masked_moments<T: Float>(x: &[T], mask: Option<&[u8]>, check_finite: bool) -> Result<Moments> {
    if let Some(m) = mask {
        check_len("mask", m.len(), x.len(), "one per element of x")?;
    }
    let blocks = x.len().div_ceil(BLOCK);
    let per_block = |b: usize| {
        let range = b * BLOCK..((b + 1) * BLOCK).min(x.len());
        block_moments(&x[range.clone()], mask.map(|m| &m[range]))
    };
    let parts: Vec<(Moments, u8)> = parallel::map(x.len(), blocks, per_block);
    let flags = parts.iter().fold(0u8, |f, p| f | p.1);
    if flags > 1 {
        let m = mask.expect("flags come from a mask");
        let i = m.iter().position(|&v| v > 1).expect("a flag > 1 was seen");
        return Err(KernelError::invalid(format!(
            "mask must hold only 0 and 1, but its element {i} (flat index) is {}",
            m[i]
        )));
    }
    let total = parts.into_iter().fold(Moments::EMPTY, |acc, p| acc.merge(p.0));
    if check_finite && total.count > 0 && !(total.mean.is_finite() && total.m2.is_finite()) {
        let takes_part = |i: usize| mask.is_none_or(|m| m[i] != 0);
        if let Some(i) = (0..x.len()).find(|&i| takes_part(i) && !x[i].is_finite()) {
            return Err(KernelError::non_finite(format!(
                "x holds {} at flat index {i} (inside the mask); pass finite inputs, or check_finite=False to skip this check",
                x[i]
            )));
        }
        return Err(KernelError::non_finite("the moments of x overflowed: its values are too large"));
    }
    Ok(total)
}

#[derive(Debug, Clone, Copy)]
pub struct WhitenParams {
    pub shift_mean: bool,
    pub unbiased: bool,
    pub eps: f64,
    pub check_finite: bool,
}

/// `(x - mean) / sqrt(var + eps)` where masked (plus the mean back when
/// `!shift_mean`), 0 elsewhere. Returns the moments it used.
pub fn masked_whiten<T: Float>(
    x: &[T],
    mask: Option<&[u8]>,
    params: &WhitenParams,
    out: &mut [T],
) -> Result<Moments> {
    check_len("out", out.len(), x.len(), "one per element of x")?;
    if params.eps.is_nan() || params.eps < 0.0 {
        return Err(KernelError::invalid(format!("eps must be >= 0, got {}", params.eps)));
    }
    let moments = masked_moments(x, mask, params.check_finite)?;
    if moments.count < 2 {
        return Err(KernelError::invalid(format!(
            "whitening needs at least 2 elements taking part (inside the mask, if any), got {}",
            moments.count
        )));
    }
    let var = moments.variance(params.unbiased);
    let scale = T::from_f64(1.0 / (var + params.eps).sqrt());
    let mean = T::from_f64(moments.mean);
    let shift_back = if params.shift_mean { T::ZERO } else { mean };
    let apply = |(b, chunk): (usize, &mut [T])| {
        let start = b * BLOCK;
        let xs = &x[start..start + chunk.len()];
        let ms = mask.map(|m| &m[start..start + chunk.len()]);
        whiten_block(xs, ms, mean, scale, shift_back, chunk);
    };
    let tasks: Vec<_> = out.chunks_mut(BLOCK).enumerate().collect();
    parallel::for_each(x.len(), tasks, apply);
    Ok(moments)
}

crate::simd::multiversion! {
    /// `(x - mean) * scale + shift_back` where masked, 0 elsewhere.
    fn whiten_block<T: Float>(x: &[T], mask: Option<&[u8]>, mean: T, scale: T, shift_back: T, out: &mut [T]) -> () => whiten_block_impl
}

#[inline(always)]
fn whiten_block_impl<T: Float, const FUSED: bool>(
    x: &[T],
    mask: Option<&[u8]>,
    mean: T,
    scale: T,
    shift_back: T,
    out: &mut [T],
) {
    match mask {
        Some(m) => {
            for ((o, &xv), &mv) in out.iter_mut().zip(x).zip(m) {
                *o = if mv != 0 { (xv - mean).mul_add_if::<FUSED>(scale, shift_back) } else { T::ZERO };
            }
        }
        None => {
            for (o, &xv) in out.iter_mut().zip(x) {
                *o = (xv - mean).mul_add_if::<FUSED>(scale, shift_back);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moments_match_two_pass_over_many_blocks() {
        let n = 3 * BLOCK + 17;
        let x: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 * 0.01 + 1000.0).collect();
        let m: Vec<u8> = (0..n).map(|i| u8::from(i % 3 != 0)).collect();
        let got = masked_moments(&x, Some(&m), true).unwrap();
        let sel: Vec<f64> = x.iter().zip(&m).filter(|(_, &m)| m == 1).map(|(&x, _)| f64::from(x)).collect();
        let mean = sel.iter().sum::<f64>() / sel.len() as f64;
        let m2: f64 = sel.iter().map(|v| (v - mean) * (v - mean)).sum();
        assert_eq!(got.count, sel.len() as u64);
        assert!((got.mean - mean).abs() < 1e-9);
        assert!((got.m2 - m2).abs() / m2 < 1e-9);
    }

    #[test]
    fn whitening_needs_two_elements() {
        let mut out = [0.0f64; 3];
        let p = WhitenParams { shift_mean: true, unbiased: true, eps: 1e-8, check_finite: true };
        let err = masked_whiten(&[1.0, 2.0, 3.0], Some(&[0, 1, 0]), &p, &mut out).unwrap_err();
        assert!(err.message.contains("at least 2"));
        masked_whiten(&[1.0, 2.0, 3.0], Some(&[1, 0, 1]), &p, &mut out).unwrap();
        assert!((out[0] + out[2]).abs() < 1e-12 && out[1] == 0.0);
    }
}
