//! Generalised advantage estimation over masked, variable-length rows.
//!
//! Per row, over the positions that take part (mask 1), from last to first:
//!
//! ```text
//! delta_t = r_t + gamma * V_next - V_t
//! A_t     = delta_t + gamma * lam * A_next
//! R_t     = A_t + V_t
//! ```
//!
//! `V_next`/`A_next` are the value and advantage of the next position that takes
//! part (masked-out holes are skipped, the recursion carries across them); after
//! the last one they are the row's bootstrap value and 0. Where `dones[t]` is 1 on
//! a position that takes part, the episode ends there: `V_next = A_next = 0` for
//! that step. Outputs are 0 at positions that do not take part.
//!
//! Rows run in parallel. A row whose tokens form one run (the usual left- or
//! right-padded response) goes through the blocked, vectorised recursion of
//! [`crate::discounted`]; rows with holes or episode ends take the exact
//! step-by-step loop.

use crate::discounted::{dense_gae, mask_shape, BlockPowers, MaskShape};
use crate::error::{KernelError, Result};
use crate::float::{any_non_finite, Float};
use crate::layout::{describe_index, split_rows_mut, Rows};
use crate::parallel::{self, RowError};

#[derive(Debug, Clone, Copy)]
pub struct GaeParams {
    pub gamma: f64,
    pub lam: f64,
    pub check_finite: bool,
}

/// Read-only inputs; `mask` and `dones` are 0/1 bytes in the layout of `rewards`.
#[derive(Debug, Clone, Copy)]
pub struct GaeInputs<'a, T> {
    pub rewards: &'a [T],
    pub values: &'a [T],
    pub mask: Option<&'a [u8]>,
    pub dones: Option<&'a [u8]>,
    pub bootstrap_values: Option<&'a [T]>,
    pub rows: Rows<'a>,
}

pub(crate) fn check_unit_interval(name: &str, x: f64) -> Result<()> {
    if x.is_nan() || !(0.0..=1.0).contains(&x) {
        return Err(KernelError::invalid(format!("{name} must be in [0, 1], got {x}")));
    }
    Ok(())
}

pub(crate) fn check_len(name: &str, len: usize, expected: usize, what: &str) -> Result<()> {
    if len != expected {
        return Err(KernelError::invalid(format!(
            "{name} must have {expected} elements ({what}), got {len}"
        )));
    }
    Ok(())
}

fn validate<T: Float>(inp: &GaeInputs<'_, T>, params: &GaeParams, adv: usize, ret: usize) -> Result<()> {
    check_unit_interval("gamma", params.gamma)?;
    check_unit_interval("lam", params.lam)?;
    let n = inp.rewards.len();
    if matches!(inp.rows, Rows::Packed { .. }) && inp.mask.is_some() {
        return Err(KernelError::invalid("mask cannot be combined with cu_seqlens (packed rows)"));
    }
    inp.rows.validate(n)?;
    check_len("values", inp.values.len(), n, "one per reward")?;
    if let Some(m) = inp.mask {
        check_len("mask", m.len(), n, "one per reward")?;
    }
    if let Some(d) = inp.dones {
        check_len("dones", d.len(), n, "one per reward")?;
    }
    if let Some(b) = inp.bootstrap_values {
        check_len("bootstrap_values", b.len(), inp.rows.num_rows(), "one per row")?;
    }
    check_len("advantages_out", adv, n, "one per reward")?;
    check_len("returns_out", ret, n, "one per reward")?;
    Ok(())
}

/// Computes advantages and returns into `advantages` and `returns` (every element
/// is written, so they may start uninitialised).
pub fn gae<T: Float>(
    inp: &GaeInputs<'_, T>,
    params: &GaeParams,
    advantages: &mut [T],
    returns: &mut [T],
) -> Result<()> {
    validate(inp, params, advantages.len(), returns.len())?;
    let ranges = inp.rows.ranges();
    let (adv_rows, adv_gaps) = split_rows_mut(advantages, &ranges);
    let (ret_rows, ret_gaps) = split_rows_mut(returns, &ranges);
    for gap in adv_gaps.into_iter().chain(ret_gaps) {
        gap.fill(T::ZERO);
    }
    let tasks: Vec<_> = adv_rows.into_iter().zip(ret_rows).enumerate().collect();
    let ctx = RowContext {
        inp,
        ranges: &ranges,
        gamma: T::from_f64(params.gamma),
        gamma_lam: T::from_f64(params.gamma * params.lam),
        powers: BlockPowers::new(params.gamma * params.lam),
        params,
    };
    parallel::try_for_each(inp.rewards.len(), tasks, |(row, (adv, ret))| ctx.row(row, adv, ret))
}

struct RowContext<'c, 'a, T> {
    inp: &'c GaeInputs<'a, T>,
    ranges: &'c [(usize, usize)],
    gamma: T,
    gamma_lam: T,
    powers: BlockPowers<T>,
    params: &'c GaeParams,
}

impl<T: Float> RowContext<'_, '_, T> {
    /// Runs the recursion on row `row`, then checks what it wrote.
    fn row(&self, row: usize, adv: &mut [T], ret: &mut [T]) -> std::result::Result<(), RowError> {
        let (s, e) = self.ranges[row];
        let rew = &self.inp.rewards[s..e];
        let val = &self.inp.values[s..e];
        let mask = self.inp.mask.map(|m| &m[s..e]);
        let dones = self.inp.dones.map(|d| &d[s..e]);
        let boot = self.inp.bootstrap_values.map_or(T::ZERO, |b| b[row]);
        // Without episode ends, the tokens of a row are one dense sequence once the
        // padding and holes are cut out: that goes through the blocked, vectorised
        // recursion (so padded and packed rows give the same bits). Rows with
        // episode ends take the exact step-by-step loop.
        let finite = match (mask, dones) {
            (None, None) => {
                dense_gae(rew, val, boot, self.gamma, self.gamma_lam, &self.powers, adv, ret)
            }
            (Some(m), None) => match mask_shape(m) {
                MaskShape::Run(a, b) => {
                    adv[..a].fill(T::ZERO);
                    ret[..a].fill(T::ZERO);
                    adv[b..].fill(T::ZERO);
                    ret[b..].fill(T::ZERO);
                    let (ra, rr) = (&mut adv[a..b], &mut ret[a..b]);
                    dense_gae(&rew[a..b], &val[a..b], boot, self.gamma, self.gamma_lam, &self.powers, ra, rr)
                }
                MaskShape::Holes => self.compacted(rew, val, m, boot, adv, ret),
                MaskShape::Invalid => return Err((row, self.bad_flags(row))),
            },
            (_, Some(d)) => {
                let flags = match mask {
                    Some(m) => self.sweep::<true>(rew, val, m, d, boot, adv, ret),
                    None => self.sweep::<false>(rew, val, &[], d, boot, adv, ret),
                };
                if flags > 1 {
                    return Err((row, self.bad_flags(row)));
                }
                !self.params.check_finite || !(any_non_finite(adv) || any_non_finite(ret))
            }
        };
        if self.params.check_finite && !finite {
            return Err((row, self.non_finite(row)));
        }
        Ok(())
    }

    /// GAE over the masked positions of a row with holes: gather them into a
    /// dense sequence, run the blocked recursion, scatter back.
    fn compacted(&self, rew: &[T], val: &[T], mask: &[u8], boot: T, adv: &mut [T], ret: &mut [T]) -> bool {
        // Branch-free stream compaction: always write, advance by the mask bit.
        let n = mask.len();
        let (mut r, mut v) = (vec![T::ZERO; n + 1], vec![T::ZERO; n + 1]);
        let mut k = 0;
        for t in 0..n {
            r[k] = rew[t];
            v[k] = val[t];
            k += usize::from(mask[t]);
        }
        let (mut a, mut rt) = (vec![T::ZERO; k], vec![T::ZERO; k]);
        let finite = dense_gae(&r[..k], &v[..k], boot, self.gamma, self.gamma_lam, &self.powers, &mut a, &mut rt);
        a.push(T::ZERO);
        rt.push(T::ZERO);
        let mut k = 0;
        for t in 0..n {
            // Masked-out positions read the spare 0 at the end (index k < len).
            let on = mask[t] != 0;
            adv[t] = if on { a[k] } else { T::ZERO };
            ret[t] = if on { rt[k] } else { T::ZERO };
            k += usize::from(on);
        }
        finite
    }

    /// The exact step-by-step recursion over a row with episode ends; returns
    /// the OR of every mask/done byte seen, so the caller can reject values other
    /// than 0/1 without a second pass.
    #[inline(always)]
    fn sweep<const MASK: bool>(
        &self,
        rew: &[T],
        val: &[T],
        mask: &[u8],
        dones: &[u8],
        boot: T,
        adv: &mut [T],
        ret: &mut [T],
    ) -> u8 {
        let len = rew.len();
        assert!(val.len() == len && adv.len() == len && ret.len() == len);
        assert!((!MASK || mask.len() == len) && dones.len() == len);
        let (mut next_v, mut next_a) = (boot, T::ZERO);
        let mut flags = 0u8;
        for t in (0..len).rev() {
            // SAFETY: every slice was asserted above to hold `len` elements.
            unsafe {
                let r = *rew.get_unchecked(t);
                let v = *val.get_unchecked(t);
                let m = if MASK { *mask.get_unchecked(t) } else { 1 };
                let d = *dones.get_unchecked(t);
                flags |= m | d;
                let (nv, na) = if d != 0 { (T::ZERO, T::ZERO) } else { (next_v, next_a) };
                let a = r + self.gamma * nv - v + self.gamma_lam * na;
                let takes_part = !MASK || m != 0;
                *adv.get_unchecked_mut(t) = if takes_part { a } else { T::ZERO };
                *ret.get_unchecked_mut(t) = if takes_part { a + v } else { T::ZERO };
                if takes_part {
                    next_v = v;
                    next_a = a;
                }
            }
        }
        flags
    }

    fn bad_flags(&self, row: usize) -> KernelError {
        let (s, e) = self.ranges[row];
        for (name, flags) in [("mask", self.inp.mask), ("dones", self.inp.dones)] {
            if let Some(i) = flags.and_then(|f| f[s..e].iter().position(|&x| x > 1)) {
                return KernelError::invalid(format!(
                    "{name} must hold only 0 and 1, but {name}{} = {}",
                    describe_index(&self.inp.rows, s + i),
                    flags.expect("checked")[s + i]
                ));
            }
        }
        KernelError::invalid("mask and dones must hold only 0 and 1")
    }

    /// Finds which input made row `row` non-finite, for the error message.
    fn non_finite(&self, row: usize) -> KernelError {
        let (s, e) = self.ranges[row];
        let takes_part = |i: usize| self.inp.mask.is_none_or(|m| m[i] != 0);
        for (name, data) in [("rewards", self.inp.rewards), ("values", self.inp.values)] {
            if let Some(i) = (s..e).find(|&i| takes_part(i) && !data[i].is_finite()) {
                return KernelError::non_finite(format!(
                    "{name}{} is {} (a position inside the mask); pass finite inputs, or check_finite=False to skip this check",
                    describe_index(&self.inp.rows, i),
                    data[i]
                ));
            }
        }
        if let Some(b) = self.inp.bootstrap_values.filter(|b| !b[row].is_finite()) {
            return KernelError::non_finite(format!(
                "bootstrap_values[{row}] is {}; pass finite inputs, or check_finite=False to skip this check",
                b[row]
            ));
        }
        KernelError::non_finite(format!(
            "advantages of row {row} overflowed to a non-finite value: rewards or values are too large for the dtype"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook loop: walk backwards over the positions that take part.
    fn reference(r: &[f64], v: &[f64], m: &[u8], d: &[u8], boot: f64, g: f64, l: f64) -> (Vec<f64>, Vec<f64>) {
        let n = r.len();
        let (mut adv, mut ret) = (vec![0.0; n], vec![0.0; n]);
        let (mut nv, mut na) = (boot, 0.0);
        for t in (0..n).rev() {
            if m[t] == 0 {
                continue;
            }
            if d[t] == 1 {
                nv = 0.0;
                na = 0.0;
            }
            let a = r[t] + g * nv - v[t] + g * l * na;
            adv[t] = a;
            ret[t] = a + v[t];
            nv = v[t];
            na = a;
        }
        (adv, ret)
    }

    fn lcg(seed: &mut u64) -> f64 {
        *seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (*seed >> 11) as f64 / (1u64 << 53) as f64
    }

    fn run_padded(rows: usize, cols: usize, seed: u64) {
        let mut s = seed;
        let n = rows * cols;
        let r: Vec<f64> = (0..n).map(|_| lcg(&mut s) - 0.5).collect();
        let v: Vec<f64> = (0..n).map(|_| lcg(&mut s) - 0.5).collect();
        let m: Vec<u8> = (0..n).map(|_| u8::from(lcg(&mut s) < 0.7)).collect();
        let d: Vec<u8> = (0..n).map(|_| u8::from(lcg(&mut s) < 0.1)).collect();
        let boot: Vec<f64> = (0..rows).map(|_| lcg(&mut s)).collect();
        let (mut adv, mut ret) = (vec![f64::NAN; n], vec![f64::NAN; n]);
        let inp = GaeInputs {
            rewards: &r,
            values: &v,
            mask: Some(&m),
            dones: Some(&d),
            bootstrap_values: Some(&boot),
            rows: Rows::Padded { rows, cols },
        };
        let p = GaeParams { gamma: 0.97, lam: 0.9, check_finite: true };
        gae(&inp, &p, &mut adv, &mut ret).unwrap();
        for b in 0..rows {
            let sl = b * cols..(b + 1) * cols;
            let (ea, er) = reference(&r[sl.clone()], &v[sl.clone()], &m[sl.clone()], &d[sl.clone()], boot[b], 0.97, 0.9);
            for t in 0..cols {
                assert!((adv[b * cols + t] - ea[t]).abs() < 1e-9, "row {b} t {t}");
                assert!((ret[b * cols + t] - er[t]).abs() < 1e-9);
            }
        }
    }

    #[test]
    fn padded_matches_reference_for_many_shapes() {
        for (rows, cols) in [(1, 1), (3, 5), (8, 7), (9, 16), (17, 33), (64, 600)] {
            run_padded(rows, cols, (rows * 31 + cols) as u64);
        }
    }

    #[test]
    fn packed_rows_match_padded_rows() {
        let r = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let v = [0.5f32, 0.25, 0.0, 1.0, 0.0, 2.0];
        let offsets = [0i64, 2, 2, 5];
        let (mut adv, mut ret) = ([9.0f32; 6], [9.0f32; 6]);
        let inp = GaeInputs { rewards: &r, values: &v, mask: None, dones: None, bootstrap_values: None, rows: Rows::Packed { offsets: &offsets } };
        gae(&inp, &GaeParams { gamma: 1.0, lam: 1.0, check_finite: true }, &mut adv, &mut ret).unwrap();
        // gamma = lam = 1 and no bootstrap: returns are reward-to-go.
        assert_eq!(ret, [3.0, 2.0, 12.0, 9.0, 5.0, 0.0]);
        assert_eq!(adv[5], 0.0, "element past the last offset is zeroed");
    }

    #[test]
    fn rejects_bad_arguments() {
        let r = [1.0f64, f64::NAN];
        let v = [0.0f64; 2];
        let m = [1u8, 1];
        let (mut a, mut b) = ([0.0; 2], [0.0; 2]);
        let inp = GaeInputs { rewards: &r, values: &v, mask: Some(&m), dones: None, bootstrap_values: None, rows: Rows::Padded { rows: 1, cols: 2 } };
        let ok = GaeParams { gamma: 1.0, lam: 1.0, check_finite: true };
        let err = gae(&inp, &ok, &mut a, &mut b).unwrap_err();
        assert!(err.message.contains("rewards[0, 1]"), "{}", err.message);
        assert!(gae(&inp, &GaeParams { gamma: 1.5, ..ok }, &mut a, &mut b).unwrap_err().message.contains("gamma"));
        let m2 = [1u8, 2];
        let inp2 = GaeInputs { rewards: &[0.0, 0.0], mask: Some(&m2), ..inp };
        assert!(gae(&inp2, &ok, &mut a, &mut b).unwrap_err().message.contains("mask"));
    }
}
