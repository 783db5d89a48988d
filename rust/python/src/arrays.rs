//! Turning Python arguments into typed, contiguous slices, with messages that name
//! the argument, say what was expected and what came instead.

use numpy::{Element, PyArrayDyn, PyReadonlyArrayDyn, PyReadwriteArrayDyn, PyUntypedArray, PyUntypedArrayMethods};
use numpy::{PyArrayDescrMethods, PyArrayMethods};
use pyo3::prelude::*;

use crate::errors::{invalid_argument, invalid_dtype};

/// The two float dtypes every float kernel accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloatKind {
    F32,
    F64,
}

fn untyped<'a, 'py>(obj: &'a Bound<'py, PyAny>, name: &str) -> PyResult<&'a Bound<'py, PyUntypedArray>> {
    obj.cast::<PyUntypedArray>().map_err(|_| {
        let given = obj.get_type().name().map_or_else(|_| "?".to_owned(), |n| n.to_string());
        invalid_dtype(format!(
            "{name} must be a numpy array (rlhf_fast.ops also takes torch tensors), got {given}"
        ))
    })
}

/// A shape as Python prints it: `(3, 4)`, `(3,)`.
pub fn fmt_shape(shape: &[usize]) -> String {
    match shape {
        [one] => format!("({one},)"),
        _ => format!("({})", shape.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")),
    }
}

pub fn dtype_name(obj: &Bound<'_, PyAny>) -> String {
    obj.getattr("dtype").and_then(|d| d.str()).map_or_else(|_| "?".to_owned(), |s| s.to_string())
}

pub fn shape_of(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<Vec<usize>> {
    Ok(untyped(obj, name)?.shape().to_vec())
}

/// The float kind of `obj`, or an error naming `name`.
pub fn float_kind(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<FloatKind> {
    let arr = untyped(obj, name)?;
    let py = obj.py();
    let dt = arr.dtype();
    if dt.is_equiv_to(&numpy::dtype::<f32>(py)) {
        Ok(FloatKind::F32)
    } else if dt.is_equiv_to(&numpy::dtype::<f64>(py)) {
        Ok(FloatKind::F64)
    } else {
        Err(invalid_dtype(format!(
            "{name} must be a float32 or float64 array, got dtype {}",
            dtype_name(obj)
        )))
    }
}

fn type_label<T: Element>(py: Python<'_>) -> String {
    numpy::dtype::<T>(py).str().map_or_else(|_| "?".to_owned(), |s| s.to_string())
}

/// A read-only view of `obj` as `T`; `like` names the argument that fixed `T`.
pub fn readonly<'py, T: Element>(
    obj: &Bound<'py, PyAny>,
    name: &str,
    like: Option<&str>,
) -> PyResult<PyReadonlyArrayDyn<'py, T>> {
    untyped(obj, name)?;
    let arr = obj.cast::<PyArrayDyn<T>>().map_err(|_| {
        let expected = type_label::<T>(obj.py());
        match like {
            Some(other) => invalid_dtype(format!(
                "{name} must have the same dtype as {other} ({expected}), got {}; cast one of them",
                dtype_name(obj)
            )),
            None => invalid_dtype(format!("{name} must have dtype {expected}, got {}", dtype_name(obj))),
        }
    })?;
    arr.try_readonly()
        .map_err(|_| invalid_argument(format!("{name} is being written elsewhere (it shares memory with an output)")))
}

/// The contiguous data of a read-only view. Only C order: `as_slice` also takes a
/// Fortran-ordered array, whose elements would be read in the wrong order.
pub fn slice<'a, T: Element>(arr: &'a PyReadonlyArrayDyn<'_, T>, name: &str) -> PyResult<&'a [T]> {
    let not_c = || {
        invalid_argument(format!(
            "{name} must be C-contiguous; pass np.ascontiguousarray({name}) (rlhf_fast.ops does this for you)"
        ))
    };
    if !arr.is_c_contiguous() {
        return Err(not_c());
    }
    arr.as_slice().map_err(|_| not_c())
}

/// An output array: `given` (checked for shape, dtype, contiguity and aliasing)
/// or a fresh uninitialised one (every kernel writes all of its elements).
pub fn output<'py, T: Element>(
    py: Python<'py>,
    given: Option<&Bound<'py, PyAny>>,
    name: &str,
    shape: &[usize],
    like: &str,
) -> PyResult<(Bound<'py, PyAny>, PyReadwriteArrayDyn<'py, T>)> {
    let array = match given {
        Some(obj) => {
            let got = shape_of(obj, name)?;
            let arr = obj.cast::<PyArrayDyn<T>>().map_err(|_| {
                invalid_dtype(format!(
                    "{name} must have the same dtype as {like} ({}), got {}",
                    type_label::<T>(py),
                    dtype_name(obj)
                ))
            })?;
            if got != shape {
                return Err(invalid_argument(format!(
                    "{name} must have shape {} (that of {like}), got {}",
                    fmt_shape(shape),
                    fmt_shape(&got)
                )));
            }
            if !obj.getattr("flags")?.getattr("writeable")?.is_truthy()? {
                return Err(invalid_argument(format!("{name} is read-only; pass a writeable array")));
            }
            arr.clone()
        }
        // The kernels write every element of their outputs before returning
        // successfully; on error the array is dropped unseen.
        None => crate::pool::uninit_array::<T>(py, shape)?,
    };
    let rw = array.try_readwrite().map_err(|_| {
        invalid_argument(format!("{name} must not share memory with an input or another output"))
    })?;
    if !rw.is_c_contiguous() {
        return Err(invalid_argument(format!("{name} must be C-contiguous")));
    }
    Ok((array.into_any(), rw))
}

/// Checks `obj` has exactly `expected` for its shape.
pub fn expect_shape(obj: &Bound<'_, PyAny>, name: &str, expected: &[usize], what: &str) -> PyResult<()> {
    let got = shape_of(obj, name)?;
    if got != expected {
        return Err(invalid_argument(format!(
            "{name} must have shape {} ({what}), got {}",
            fmt_shape(expected),
            fmt_shape(&got)
        )));
    }
    Ok(())
}

/// Checks the number of dimensions.
pub fn expect_ndim(obj: &Bound<'_, PyAny>, name: &str, ndim: usize, layout: &str) -> PyResult<Vec<usize>> {
    let shape = shape_of(obj, name)?;
    if shape.len() != ndim {
        return Err(invalid_argument(format!(
            "{name} must be {ndim}-D {layout}, got {}-D with shape {}",
            shape.len(),
            fmt_shape(&shape)
        )));
    }
    Ok(shape)
}

/// An optional uint8 flag array (mask, dones) of the given shape.
pub fn flags<'py>(
    obj: Option<&Bound<'py, PyAny>>,
    name: &str,
    shape: &[usize],
    like: &str,
) -> PyResult<Option<PyReadonlyArrayDyn<'py, u8>>> {
    obj.map(|o| {
        let arr = readonly::<u8>(o, name, None).map_err(|_| {
            invalid_dtype(format!(
                "{name} must be a uint8 array of 0/1 (rlhf_fast.ops converts bool/int/float masks), got dtype {}",
                dtype_name(o)
            ))
        })?;
        expect_shape(o, name, shape, &format!("that of {like}"))?;
        Ok(arr)
    })
    .transpose()
}

/// int64 offsets (`cu_seqlens`) or indices.
pub fn int64<'py>(obj: &Bound<'py, PyAny>, name: &str) -> PyResult<PyReadonlyArrayDyn<'py, i64>> {
    expect_ndim(obj, name, 1, "[K]")?;
    readonly::<i64>(obj, name, None).map_err(|_| {
        invalid_dtype(format!("{name} must be an int64 array, got dtype {}", dtype_name(obj)))
    })
}

/// The row layout of a kernel's leading argument: padded `[B, T]`, or packed
/// `[N]` with `cu_seqlens` offsets.
pub struct RowLayout<'py> {
    pub shape: Vec<usize>,
    offsets: Option<PyReadonlyArrayDyn<'py, i64>>,
}

impl<'py> RowLayout<'py> {
    /// Checks `first` (named `name`) has the dimensions its layout needs and holds
    /// at least one element.
    pub fn parse(first: &Bound<'py, PyAny>, name: &str, cu_seqlens: Option<&Bound<'py, PyAny>>) -> PyResult<Self> {
        let shape = match cu_seqlens {
            Some(_) => expect_ndim(first, name, 1, "[N] when cu_seqlens is given")?,
            None => expect_ndim(first, name, 2, "[B, T] (or [N] with cu_seqlens)")?,
        };
        not_empty(name, &shape)?;
        let offsets = cu_seqlens.map(|c| int64(c, "cu_seqlens")).transpose()?;
        Ok(Self { shape, offsets })
    }

    /// The rows: padded `[B, T]`, or packed by `cu_seqlens` (checked by the kernel).
    pub fn rows(&self) -> PyResult<rlhf_fast_kernels::Rows<'_>> {
        use rlhf_fast_kernels::Rows;
        Ok(match &self.offsets {
            Some(o) => Rows::Packed { offsets: slice(o, "cu_seqlens")? },
            None => Rows::Padded { rows: self.shape[0], cols: self.shape[1] },
        })
    }
}

/// Refuses an input without elements, naming it.
pub fn not_empty(name: &str, shape: &[usize]) -> PyResult<()> {
    if shape.iter().product::<usize>() == 0 {
        return Err(invalid_argument(format!(
            "{name} is empty (shape {}); pass at least one row with at least one element",
            fmt_shape(shape)
        )));
    }
    Ok(())
}
