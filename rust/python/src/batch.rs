//! Bindings of `rlhf_fast_kernels::batch` and `random`: ragged -> padded, shuffling.

use numpy::{Element, PyArray1, PyArrayMethods};
use pyo3::prelude::*;
use rlhf_fast_kernels::batch::{self as kernel, Selection, Side};
use rlhf_fast_kernels::random;

use crate::arrays::{dtype_name, expect_ndim, int64, readonly, slice};
use crate::errors::{from_kernel, invalid_argument, invalid_dtype};
use crate::pool::uninit_array;

/// Converts the Python pad value to the element type, refusing lossy casts.
trait PadValue: Element + Copy + Send + Sync {
    fn from_pad(v: f64) -> Option<Self>;
}

macro_rules! int_pad {
    ($($t:ty),*) => {$(
        impl PadValue for $t {
            fn from_pad(v: f64) -> Option<Self> {
                (v.fract() == 0.0 && v >= <$t>::MIN as f64 && v <= <$t>::MAX as f64).then(|| v as $t)
            }
        }
    )*};
}
#[allow(clippy::cast_lossless)] // one macro body for i64 too, where `From` does not exist
mod int_pads {
    use super::PadValue;
    int_pad!(i64, i32, u8);
}

impl PadValue for f32 {
    fn from_pad(v: f64) -> Option<Self> {
        Some(v as f32)
    }
}

impl PadValue for f64 {
    fn from_pad(v: f64) -> Option<Self> {
        Some(v)
    }
}

type Padded<'py> = (Bound<'py, PyAny>, Bound<'py, PyAny>);

fn run<'py, E: PadValue>(
    py: Python<'py>,
    values: &Bound<'py, PyAny>,
    offsets: &[i64],
    indices: Option<&[i64]>,
    pad_value: f64,
    side: Side,
    length: Option<usize>,
) -> PyResult<Padded<'py>> {
    let pad = E::from_pad(pad_value).ok_or_else(|| {
        invalid_argument(format!(
            "pad_value {pad_value} cannot be stored exactly in dtype {} of sequences",
            dtype_name(values)
        ))
    })?;
    let v = readonly::<E>(values, "sequences", None)?;
    let vs = slice(&v, "sequences")?;
    let sel = Selection { offsets, indices };
    let (rows, len) = sel.padded_shape(vs.len(), length).map_err(from_kernel)?;
    // `pad_ragged` writes every element of both outputs.
    let padded = uninit_array::<E>(py, &[rows, len])?;
    let mask = uninit_array::<bool>(py, &[rows, len])?;
    {
        let mut p = padded.readwrite();
        let mut m = mask.readwrite();
        let ps = p.as_slice_mut().expect("fresh arrays are contiguous");
        let ms = m.as_slice_mut().expect("fresh arrays are contiguous");
        py.detach(|| kernel::pad_ragged(vs, &sel, pad, side, len, ps, ms)).map_err(from_kernel)?;
    }
    Ok((padded.into_any(), mask.into_any()))
}

/// Ragged rows to a padded batch and mask; see `_native.pyi`.
#[pyfunction]
#[pyo3(signature = (values, offsets, *, pad_value=0.0, side="right", length=None, indices=None))]
pub fn pad_ragged<'py>(
    py: Python<'py>,
    values: &Bound<'py, PyAny>,
    offsets: &Bound<'py, PyAny>,
    pad_value: f64,
    side: &str,
    length: Option<i64>,
    indices: Option<&Bound<'py, PyAny>>,
) -> PyResult<Padded<'py>> {
    let side = Side::parse(side).map_err(from_kernel)?;
    let length = match length {
        Some(l) if l < 0 => return Err(invalid_argument(format!("max_length must be >= 0, got {l}"))),
        l => l.map(|l| l as usize),
    };
    expect_ndim(values, "sequences", 1, "[N] (the rows back to back, with offsets)")?;
    let off = int64(offsets, "offsets")?;
    let off = slice(&off, "offsets")?;
    let idx = indices.map(|i| int64(i, "indices")).transpose()?;
    let idx = idx.as_ref().map(|i| slice(i, "indices")).transpose()?;
    let dt = values.getattr("dtype")?;
    macro_rules! try_dtype {
        ($($t:ty),*) => {$(
            if dt.eq(numpy::dtype::<$t>(py))? {
                return run::<$t>(py, values, off, idx, pad_value, side, length);
            }
        )*};
    }
    try_dtype!(f32, f64, i64, i32, u8);
    Err(invalid_dtype(format!(
        "sequences must hold float32, float64, int64, int32, uint8 or bool, got {}; cast them",
        dtype_name(values)
    )))
}

fn seed_of(seed: &Bound<'_, PyAny>) -> PyResult<u64> {
    seed.extract::<u64>().map_err(|_| {
        invalid_argument(format!("seed must be an integer in [0, 2**64), got {}", seed.repr().map_or_else(|_| "?".into(), |r| r.to_string())))
    })
}

/// The seeded permutation of `range(n)`; see `_native.pyi`.
#[pyfunction]
#[pyo3(signature = (n, *, seed))]
pub fn permutation<'py>(py: Python<'py>, n: i64, seed: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyArray1<i64>>> {
    if n < 0 {
        return Err(invalid_argument(format!("n must be >= 0, got {n}")));
    }
    let seed = seed_of(seed)?;
    let p = py.detach(|| random::permutation(n as usize, seed));
    Ok(PyArray1::from_vec(py, p))
}

/// Seeded minibatches of `range(n)`; see `_native.pyi`.
#[pyfunction]
#[pyo3(signature = (n, minibatch_size, *, seed, drop_last=false))]
pub fn minibatch_indices<'py>(
    py: Python<'py>,
    n: i64,
    minibatch_size: i64,
    seed: &Bound<'py, PyAny>,
    drop_last: bool,
) -> PyResult<Vec<Bound<'py, PyArray1<i64>>>> {
    if n < 1 {
        return Err(invalid_argument(format!("n must be >= 1 (the number of rows to shuffle), got {n}")));
    }
    if minibatch_size < 1 {
        return Err(invalid_argument(format!("minibatch_size must be >= 1, got {minibatch_size}")));
    }
    let seed = seed_of(seed)?;
    let p = py.detach(|| random::permutation(n as usize, seed));
    let size = minibatch_size as usize;
    Ok(p.chunks(size)
        .filter(|c| !drop_last || c.len() == size)
        .map(|c| PyArray1::from_slice(py, c))
        .collect())
}
