//! Per-token RLHF math on plain slices: GAE, KL-shaped rewards, masked moments and
//! whitening, group (GRPO/RLOO) advantages, ragged batching and seeded shuffling.
//!
//! Nothing here knows about Python: the binding crate (`rust/python`) turns arrays
//! into slices, validates what only it can see (dtypes, contiguity) and maps
//! [`KernelError`] to exceptions. Every kernel is generic over `f32`/`f64`, writes
//! every element of its outputs (so callers may pass uninitialised buffers), and
//! gives the same bits whatever the thread count.
//!
//! Layouts ([`layout::Rows`]): *padded* `[B, T]` row-major with a `[B, T]` mask, or
//! *packed* flat `[N]` with `cu_seqlens` offsets (every element of a row takes part).

pub mod batch;
pub mod discounted;
pub mod error;
pub mod float;
pub mod gae;
pub mod group;
pub mod kl;
pub mod layout;
pub mod parallel;
pub mod random;
pub mod simd;
pub mod whiten;

pub use error::{ErrorKind, KernelError};
pub use float::Float;
pub use layout::Rows;
