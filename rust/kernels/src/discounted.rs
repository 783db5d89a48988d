//! GAE on a dense segment (every position takes part, no episode ends inside):
//! the common RLHF row once its padding is cut off.
//!
//! There the recursion is `A_t = delta_t + c * A_{t+1}` with a constant
//! `c = gamma * lam` and `delta_t = r_t + gamma * V_{t+1} - V_t`, which is data
//! parallel except for one carry. In blocks of [`BLOCK`] positions:
//! `A[i..i+K] = S(delta[i..i+K]) + p * A[i+K]`, where `S` is the in-block
//! discounted suffix sum `S(d)[a] = sum_j c^j d[a+j]`, computed as a three-step
//! Hillis-Steele scan (strides 1, 2, 4 with factors c, c^2, c^4), and
//! `p[a] = c^(K-a)`. The scan vectorises (a lane shift and a multiply-add per
//! step), and the serial chain shrinks to one multiply-add per block instead of
//! one per position. Results equal the step-by-step recursion up to rounding
//! (the sums associate differently).

use crate::float::Float;

/// Positions per block.
pub const BLOCK: usize = 8;

/// Powers of `c` used by every block.
pub struct BlockPowers<T> {
    /// `c^1, c^2, c^4`: the factors of the scan's three steps.
    strides: [T; 3],
    /// `carry[a] = c^(K-a)`: how much of the next block's first advantage reaches `a`.
    carry: [T; BLOCK],
}

impl<T: Float> BlockPowers<T> {
    pub fn new(c: f64) -> Self {
        let pow = |k: usize| T::from_f64(c.powi(k as i32));
        Self {
            strides: [pow(1), pow(2), pow(4)],
            carry: std::array::from_fn(|a| pow(BLOCK - a)),
        }
    }
}

crate::simd::multiversion! {
    /// Writes advantages and returns of a dense segment; `boot` is the value after
    /// its last position. Returns false if any output is NaN or infinite.
    pub fn dense_gae<T: Float>(
        rew: &[T],
        val: &[T],
        boot: T,
        gamma: T,
        c: T,
        powers: &BlockPowers<T>,
        adv: &mut [T],
        ret: &mut [T],
    ) -> bool => dense_gae_impl
}

#[inline(always)]
fn dense_gae_impl<T: Float, const FUSED: bool>(
    rew: &[T],
    val: &[T],
    boot: T,
    gamma: T,
    c: T,
    powers: &BlockPowers<T>,
    adv: &mut [T],
    ret: &mut [T],
) -> bool {
    let n = rew.len();
    assert!(val.len() == n && adv.len() == n && ret.len() == n);
    let blocked = n - n % BLOCK;
    let (mut next_v, mut next_a) = (boot, T::ZERO);
    // Stays 0 while every output is finite.
    let mut poison = [T::ZERO; BLOCK];
    // The tail that does not fill a block runs first, step by step.
    for t in (blocked..n).rev() {
        let (r, v) = (rew[t], val[t]);
        let a = c.mul_add_if::<FUSED>(next_a, r + gamma * next_v - v);
        adv[t] = a;
        ret[t] = a + v;
        poison[0] = poison[0] + a.poison() + ret[t].poison();
        next_v = v;
        next_a = a;
    }
    let mut start = blocked;
    while start >= BLOCK {
        start -= BLOCK;
        let r: &[T; BLOCK] = rew[start..start + BLOCK].try_into().expect("block");
        let v: &[T; BLOCK] = val[start..start + BLOCK].try_into().expect("block");
        let mut v_next = [next_v; BLOCK];
        v_next[..BLOCK - 1].copy_from_slice(&v[1..]);
        let mut y: [T; BLOCK] = std::array::from_fn(|a| gamma.mul_add_if::<FUSED>(v_next[a], r[a]) - v[a]);
        // Hillis-Steele scan: after the step with stride k, y[a] sums
        // c^j * delta[a + j] for j < 2k (within the block).
        for (step, &ck) in powers.strides.iter().enumerate() {
            let k = 1 << step;
            let shifted: [T; BLOCK] = std::array::from_fn(|a| if a + k < BLOCK { y[a + k] } else { T::ZERO });
            y = std::array::from_fn(|a| ck.mul_add_if::<FUSED>(shifted[a], y[a]));
        }
        let out_a: &mut [T; BLOCK] = (&mut adv[start..start + BLOCK]).try_into().expect("block");
        let out_r: &mut [T; BLOCK] = (&mut ret[start..start + BLOCK]).try_into().expect("block");
        for a in 0..BLOCK {
            let x = powers.carry[a].mul_add_if::<FUSED>(next_a, y[a]);
            out_a[a] = x;
            out_r[a] = x + v[a];
            poison[a] = poison[a] + x.poison() + out_r[a].poison();
        }
        next_a = out_a[0];
        next_v = v[0];
    }
    poison.iter().all(|&p| p == T::ZERO)
}

/// Where the ones of a 0/1 mask lie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskShape {
    /// All ones form one run `start..end` (empty when `start == end`).
    Run(usize, usize),
    /// Ones with zeros between them (holes).
    Holes,
    /// A byte other than 0 and 1.
    Invalid,
}

/// Classifies a mask in vectorised passes (a sum and an OR over the bytes).
pub fn mask_shape(mask: &[u8]) -> MaskShape {
    let flags = mask.iter().fold(0u8, |f, &m| f | m);
    // Counted in u32 lanes (vectorises well) per chunk small enough not to overflow.
    let ones: usize = mask.chunks(1 << 24).map(|c| c.iter().map(|&m| u32::from(m)).sum::<u32>() as usize).sum();
    if flags > 1 {
        return MaskShape::Invalid;
    }
    if ones == 0 {
        return MaskShape::Run(0, 0);
    }
    let start = first_nonzero(mask);
    let end = start + ones;
    if end <= mask.len() && mask[start..end].iter().fold(true, |ok, &m| ok & (m == 1)) {
        MaskShape::Run(start, end)
    } else {
        MaskShape::Holes
    }
}

fn first_nonzero(mask: &[u8]) -> usize {
    let mut words = mask.chunks_exact(16);
    let mut base = 0;
    for w in words.by_ref() {
        if w.iter().fold(0u8, |f, &m| f | m) != 0 {
            return base + w.iter().position(|&m| m != 0).expect("word has a nonzero byte");
        }
        base += 16;
    }
    base + words.remainder().iter().position(|&m| m != 0).unwrap_or(words.remainder().len())
}

/// Index of the last nonzero byte, scanning 16 bytes at a time from the end.
pub fn last_nonzero(mask: &[u8]) -> Option<usize> {
    let mut words = mask.rchunks_exact(16);
    let mut end = mask.len();
    for w in words.by_ref() {
        if w.iter().fold(0u8, |f, &m| f | m) != 0 {
            return w.iter().rposition(|&m| m != 0).map(|i| end - 16 + i);
        }
        end -= 16;
    }
    words.remainder().iter().rposition(|&m| m != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_matches_step_by_step() {
        for n in [0usize, 1, 7, 8, 9, 16, 29, 100] {
            let r: Vec<f64> = (0..n).map(|i| ((i * 37) % 11) as f64 - 5.0).collect();
            let v: Vec<f64> = (0..n).map(|i| ((i * 13) % 7) as f64 * 0.5).collect();
            let (g, l, boot) = (0.99, 0.9, 1.5);
            let (mut a, mut rt) = (vec![0.0; n], vec![0.0; n]);
            assert!(dense_gae(&r, &v, boot, g, g * l, &BlockPowers::new(g * l), &mut a, &mut rt));
            let (mut nv, mut na) = (boot, 0.0);
            for t in (0..n).rev() {
                let e = r[t] + g * nv - v[t] + g * l * na;
                assert!((a[t] - e).abs() < 1e-9, "n={n} t={t}: {} vs {e}", a[t]);
                assert!((rt[t] - (e + v[t])).abs() < 1e-9);
                nv = v[t];
                na = e;
            }
        }
    }

    #[test]
    fn flags_non_finite_outputs() {
        let r = vec![1.0f32; 20];
        let mut v = vec![0.0f32; 20];
        v[3] = f32::INFINITY;
        let (mut a, mut rt) = (vec![0.0; 20], vec![0.0; 20]);
        assert!(!dense_gae(&r, &v, 0.0, 1.0, 1.0, &BlockPowers::new(1.0), &mut a, &mut rt));
    }

    #[test]
    fn classifies_masks() {
        assert_eq!(mask_shape(&[0, 0, 1, 1, 0]), MaskShape::Run(2, 4));
        assert_eq!(mask_shape(&[0; 40]), MaskShape::Run(0, 0));
        assert_eq!(mask_shape(&[1, 0, 1]), MaskShape::Holes);
        assert_eq!(mask_shape(&[1, 2]), MaskShape::Invalid);
        let mut long = vec![0u8; 50];
        long[33..47].fill(1);
        assert_eq!(mask_shape(&long), MaskShape::Run(33, 47));
        assert_eq!(last_nonzero(&long), Some(46));
        assert_eq!(last_nonzero(&long[..33]), None);
        assert_eq!(last_nonzero(&[1, 0, 0]), Some(0));
    }
}
