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
    ($t:ty) => {
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
        }
    };
}

impl_float!(f32);
impl_float!(f64);

/// True when any element is NaN or +/-Inf. Written as a branch-free fold so it
/// vectorises: it runs over data the kernel has just written and still holds in cache.
#[inline]
pub fn any_non_finite<T: Float>(xs: &[T]) -> bool {
    xs.iter().fold(false, |bad, &x| bad | !x.is_finite())
}
