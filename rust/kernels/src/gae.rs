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
//! The recursion is a serial dependency chain per row, so rows of equal length
//! are processed [`LANES`] at a time: independent chains interleave and hide each
//! other's latency.

use crate::error::{KernelError, Result};
use crate::float::{any_non_finite, Float};
use crate::layout::{describe_index, split_rows_mut, Rows};
use crate::parallel::{self, RowError};

/// Rows advanced together in the inner loop.
pub const LANES: usize = 8;

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
    let longest = ranges.iter().map(|&(s, e)| e - s).max().unwrap_or(0);
    // Missing masks/dones read as all-ones/all-zeros rows: one code path, and the
    // extra bytes stay in L1.
    let ones = vec![1u8; longest];
    let zeros = vec![0u8; longest];

    let per_task = parallel::rows_per_task(ranges.len(), longest).next_multiple_of(LANES);
    let mut tasks = Vec::new();
    let mut adv_iter = adv_rows.into_iter();
    let mut ret_iter = ret_rows.into_iter();
    for first in (0..ranges.len()).step_by(per_task.max(1)) {
        let last = (first + per_task).min(ranges.len());
        let adv: Vec<_> = adv_iter.by_ref().take(last - first).collect();
        let ret: Vec<_> = ret_iter.by_ref().take(last - first).collect();
        tasks.push((first, adv, ret));
    }
    let gamma = T::from_f64(params.gamma);
    let gamma_lam = T::from_f64(params.gamma * params.lam);
    let ctx = RowContext { inp, ranges: &ranges, ones: &ones, zeros: &zeros, gamma, gamma_lam, params };

    parallel::run(inp.rewards.len(), |par| {
        parallel::try_for_each(tasks, par, |(first, mut adv, mut ret)| {
            let mut row = first;
            let mut adv = adv.iter_mut();
            let mut ret = ret.iter_mut();
            while let Some(a0) = adv.next() {
                let r0 = ret.next().expect("one returns row per advantages row");
                let len = a0.len();
                let group_end = (row + LANES).min(row + adv.len() + 1);
                let equal = group_end - row == LANES
                    && ranges[row..group_end].iter().all(|&(s, e)| e - s == len);
                if equal {
                    let mut adv_lanes: [&mut [T]; LANES] = std::array::from_fn(|_| <&mut [T]>::default());
                    let mut ret_lanes: [&mut [T]; LANES] = std::array::from_fn(|_| <&mut [T]>::default());
                    adv_lanes[0] = &mut a0[..];
                    ret_lanes[0] = &mut r0[..];
                    for l in 1..LANES {
                        adv_lanes[l] = &mut adv.next().expect("group fits in task")[..];
                        ret_lanes[l] = &mut ret.next().expect("group fits in task")[..];
                    }
                    ctx.rows::<LANES>(row, adv_lanes, ret_lanes)?;
                    row += LANES;
                } else {
                    ctx.rows::<1>(row, [&mut a0[..]], [&mut r0[..]])?;
                    row += 1;
                }
            }
            Ok(())
        })
    })
}

struct RowContext<'c, 'a, T> {
    inp: &'c GaeInputs<'a, T>,
    ranges: &'c [(usize, usize)],
    ones: &'c [u8],
    zeros: &'c [u8],
    gamma: T,
    gamma_lam: T,
    params: &'c GaeParams,
}

impl<T: Float> RowContext<'_, '_, T> {
    /// Runs the recursion on `N` rows of equal length starting at row `first`.
    #[inline]
    fn rows<const N: usize>(
        &self,
        first: usize,
        adv: [&mut [T]; N],
        ret: [&mut [T]; N],
    ) -> std::result::Result<(), RowError> {
        let len = adv[0].len();
        let rng: [(usize, usize); N] = std::array::from_fn(|l| self.ranges[first + l]);
        let rew: [&[T]; N] = std::array::from_fn(|l| &self.inp.rewards[rng[l].0..rng[l].1]);
        let val: [&[T]; N] = std::array::from_fn(|l| &self.inp.values[rng[l].0..rng[l].1]);
        let mask: [&[u8]; N] =
            std::array::from_fn(|l| self.inp.mask.map_or(&self.ones[..len], |m| &m[rng[l].0..rng[l].1]));
        let dones: [&[u8]; N] =
            std::array::from_fn(|l| self.inp.dones.map_or(&self.zeros[..len], |d| &d[rng[l].0..rng[l].1]));
        let mut next_v: [T; N] =
            std::array::from_fn(|l| self.inp.bootstrap_values.map_or(T::ZERO, |b| b[first + l]));
        let mut next_a = [T::ZERO; N];
        let mut flags_seen = [0u8; N];
        for l in 0..N {
            assert!(
                rew[l].len() == len && val[l].len() == len && mask[l].len() == len
                    && dones[l].len() == len && adv[l].len() == len && ret[l].len() == len
            );
        }
        for t in (0..len).rev() {
            for l in 0..N {
                // SAFETY: every slice was asserted above to hold exactly `len` elements.
                let (r, v, m, d) = unsafe {
                    (
                        *rew[l].get_unchecked(t),
                        *val[l].get_unchecked(t),
                        *mask[l].get_unchecked(t),
                        *dones[l].get_unchecked(t),
                    )
                };
                flags_seen[l] |= m | d;
                let takes_part = m != 0;
                let ends = d != 0;
                let nv = if ends { T::ZERO } else { next_v[l] };
                let na = if ends { T::ZERO } else { next_a[l] };
                let a = r + self.gamma * nv - v + self.gamma_lam * na;
                // SAFETY: as above.
                unsafe {
                    *adv[l].get_unchecked_mut(t) = if takes_part { a } else { T::ZERO };
                    *ret[l].get_unchecked_mut(t) = if takes_part { a + v } else { T::ZERO };
                }
                if takes_part {
                    next_v[l] = v;
                    next_a[l] = a;
                }
            }
        }
        for l in 0..N {
            let row = first + l;
            if flags_seen[l] > 1 {
                return Err((row, self.bad_flags(row)));
            }
            if self.params.check_finite && (any_non_finite(adv[l]) || any_non_finite(ret[l])) {
                return Err((row, self.non_finite(row)));
            }
        }
        Ok(())
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
