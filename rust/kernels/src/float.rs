//! The float trait the kernels are generic over (`f32` and `f64`).

use std::fmt::{Debug, Display};
use std::ops::{Add, Mul, Neg, Sub};

pub trait Float:
    Copy
    + Send
    + Sync
    + Debug
    + Display
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Neg<Output = Self>
    + 'static
{
    const ZERO: Self;
    const ONE: Self;
    const HALF: Self;
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
    fn is_finite(self) -> bool;
    fn abs(self) -> Self;
    fn exp(self) -> Self;
    /// `exp` by range reduction and a polynomial, written so it vectorises
    /// (libm's `exp` is a scalar call). Within 2 ulp of `exp` for finite input;
    /// NaN stays NaN, overflow gives +Inf, deep underflow gives 0.
    fn exp_vec(self) -> Self {
        self.exp_vec_if::<false>()
    }
    /// [`Float::exp_vec`] with fused multiply-adds where `FUSED` (see `mul_add_if`).
    fn exp_vec_if<const FUSED: bool>(self) -> Self;
    /// `self * a + b`, fused where `FUSED` (only instantiate `FUSED = true` in
    /// code compiled with the `fma` target feature: elsewhere it is a libm call).
    #[inline(always)]
    fn mul_add_if<const FUSED: bool>(self, a: Self, b: Self) -> Self {
        if FUSED {
            self.fused_mul_add(a, b)
        } else {
            self * a + b
        }
    }
    fn fused_mul_add(self, a: Self, b: Self) -> Self;
    /// 0 for a finite number, NaN for NaN and +/-Inf: summed over outputs, it
    /// checks finiteness with one vectorisable add per element.
    #[inline(always)]
    #[allow(clippy::eq_op)]
    fn poison(self) -> Self {
        self - self
    }
    /// Clamp to `[lo, hi]`; NaN stays NaN (the finite check reports it).
    #[inline]
    fn clamp_to(self, lo: Self, hi: Self) -> Self {
        if self < lo {
            lo
        } else if self > hi {
            hi
        } else {
            self
        }
    }
}

macro_rules! impl_float {
    ($t:ty, $bits:ty, $mant:expr, $bias:expr, $magic:expr, $lo:expr, $hi:expr, $overflow:expr, [$($coef:expr),*]) => {
        impl Float for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const HALF: Self = 0.5;
            #[inline]
            fn from_f64(x: f64) -> Self {
                x as $t
            }
            #[inline]
            fn to_f64(self) -> f64 {
                f64::from(self)
            }
            #[inline]
            fn is_finite(self) -> bool {
                <$t>::is_finite(self)
            }
            #[inline]
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            #[inline]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            #[inline(always)]
            fn fused_mul_add(self, a: Self, b: Self) -> Self {
                <$t>::mul_add(self, a, b)
            }
            #[inline(always)]
            #[allow(clippy::excessive_precision, clippy::unreadable_literal)]
            fn exp_vec_if<const FUSED: bool>(self) -> Self {
                const LN2_HI: $t = 0.693_145_751_953_125;
                const LN2_LO: $t = 1.428_606_820_309_417_2e-6;
                let x = self.clamp_to($lo, $hi);
                // Round x / ln 2 to the nearest integer k with the magic-number
                // trick: k sits in the low mantissa bits of `y`.
                let y = x * core::f64::consts::LOG2_E as $t + $magic;
                let k = y - $magic;
                let k_bits = y.to_bits().wrapping_sub(($magic as $t).to_bits());
                let r = (x - k * LN2_HI) - k * LN2_LO;
                // Taylor series of exp(r), |r| <= ln(2) / 2, by Horner's rule (the
                // truncation error is below half an ulp of the type).
                let mut p: $t = 0.0;
                for c in [$($coef),*] {
                    p = p.mul_add_if::<FUSED>(r, c);
                }
                let scale = <$t>::from_bits(k_bits.wrapping_add($bias) << $mant);
                let e = p * scale;
                if self > $overflow { <$t>::INFINITY } else if self < $lo { 0.0 } else { e }
            }
        }
    };
}

impl_float!(f32, u32, 23, 127, 12_582_912.0, -87.0, 88.0, 88.722_83,
    [1.0 / 5040.0, 1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0]);
impl_float!(f64, u64, 52, 1023, 6_755_399_441_055_744.0, -708.0, 709.0, 709.782_712_893_384,
    [1.0 / 6_227_020_800.0, 1.0 / 479_001_600.0, 1.0 / 39_916_800.0, 1.0 / 3_628_800.0,
     1.0 / 362_880.0, 1.0 / 40320.0, 1.0 / 5040.0, 1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0,
     1.0 / 6.0, 0.5, 1.0, 1.0]);

/// True when any element is NaN or +/-Inf. Written as a branch-free fold so it
/// vectorises: it runs over data the kernel has just written and still holds in cache.
#[inline]
pub fn any_non_finite<T: Float>(xs: &[T]) -> bool {
    xs.iter().fold(false, |bad, &x| bad | !x.is_finite())
}

#[cfg(test)]
mod tests {
    use super::Float;

    #[test]
    fn exp_vec_matches_exp() {
        for i in -2000..=2000 {
            let x = f64::from(i) * 0.05;
            let (got, want) = (x.exp_vec(), x.exp());
            assert!(((got - want) / want).abs() < 4e-16, "f64 exp({x}): {got} vs {want}");
            let xf = x as f32;
            if xf.abs() < 87.0 {
                let (got, want) = (xf.exp_vec(), f64::from(xf).exp());
                assert!(((f64::from(got) - want) / want).abs() < 3e-7, "f32 exp({xf}): {got} vs {want}");
            }
        }
        assert_eq!(100.0f32.exp_vec(), f32::INFINITY);
        assert_eq!((-100.0f32).exp_vec(), 0.0);
        assert!(f32::NAN.exp_vec().is_nan());
        assert_eq!(f64::NEG_INFINITY.exp_vec(), 0.0);
    }
}
