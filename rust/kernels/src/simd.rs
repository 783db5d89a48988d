//! Runtime CPU-feature dispatch for the hot loops.
//!
//! Wheels target the x86-64 baseline (SSE2) so they run everywhere; the hot
//! loops are compiled a second time with AVX2 + FMA and picked at run time when
//! the CPU has them. Both copies come from one generic body whose `FUSED` flag
//! says whether `mul_add` may be used (see [`crate::float::Float::mul_add_if`]).

/// True when the CPU has AVX2 and FMA (checked once).
#[cfg(target_arch = "x86_64")]
pub fn has_avx2_fma() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

/// Defines `fn $name<T: Float>(args) -> R` that runs `$body::<T, true>` compiled
/// for AVX2 + FMA when the CPU has them, else `$body::<T, false>`.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident<T: Float>($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty => $body:ident) => {
        $(#[$meta])*
        $vis fn $name<T: Float>($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn fast<T: Float>($($arg: $ty),*) -> $ret {
                    $body::<T, true>($($arg),*)
                }
                if $crate::simd::has_avx2_fma() {
                    // SAFETY: the CPU supports the features `fast` is compiled for.
                    return unsafe { fast::<T>($($arg),*) };
                }
            }
            $body::<T, false>($($arg),*)
        }
    };
}
pub(crate) use multiversion;
