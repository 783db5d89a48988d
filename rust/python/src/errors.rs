//! The exception classes and the one place kernel errors become Python errors.
//!
//! Each class also derives from the built-in a caller expects (`ValueError`,
//! `TypeError`), which `create_exception!` cannot express, so the classes are
//! made with `type(name, bases, ns)` when the module loads.

use pyo3::exceptions::{PyException, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};
use rlhf_fast_kernels::{ErrorKind, KernelError};

static BASE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static INVALID_ARGUMENT: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static INVALID_DTYPE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static NON_FINITE: PyOnceLock<Py<PyType>> = PyOnceLock::new();

fn make_class<'py>(
    py: Python<'py>,
    name: &str,
    doc: &str,
    bases: &[Bound<'py, PyType>],
) -> PyResult<Py<PyType>> {
    let ns = PyDict::new(py);
    ns.set_item("__module__", "rlhf_fast._native")?;
    ns.set_item("__doc__", doc)?;
    let bases = PyTuple::new(py, bases)?;
    let class = py.get_type::<PyType>().call1((name, bases, ns))?;
    Ok(class.cast_into::<PyType>()?.unbind())
}

/// Creates the classes and adds them to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let base = make_class(py, "RlhfFastError", "Base class of every error raised by rlhf_fast.", &[
        py.get_type::<PyException>(),
    ])?;
    let base_b = base.bind(py).clone();
    let invalid = make_class(py, "InvalidArgumentError", "An argument has the wrong shape, value or range.", &[
        base_b.clone(),
        py.get_type::<PyValueError>(),
    ])?;
    let dtype = make_class(py, "InvalidDtypeError", "An argument has the wrong dtype or kind.", &[
        base_b.clone(),
        py.get_type::<PyTypeError>(),
    ])?;
    let non_finite = make_class(py, "NonFiniteError", "A float input holds NaN or +/-Inf where it is used.", &[
        invalid.bind(py).clone(),
    ])?;
    for (name, class, cell) in [
        ("RlhfFastError", base, &BASE),
        ("InvalidArgumentError", invalid, &INVALID_ARGUMENT),
        ("InvalidDtypeError", dtype, &INVALID_DTYPE),
        ("NonFiniteError", non_finite, &NON_FINITE),
    ] {
        m.add(name, class.bind(py))?;
        let _ = cell.set(py, class);
    }
    Ok(())
}

fn raise(cell: &PyOnceLock<Py<PyType>>, message: String) -> PyErr {
    Python::attach(|py| match cell.get(py) {
        Some(class) => PyErr::from_type(class.bind(py).clone(), message),
        None => PyValueError::new_err(message),
    })
}

/// A `ValueError` subclass: wrong shape, value or range.
pub fn invalid_argument(message: impl Into<String>) -> PyErr {
    raise(&INVALID_ARGUMENT, message.into())
}

/// A `TypeError` subclass: wrong dtype or kind of object.
pub fn invalid_dtype(message: impl Into<String>) -> PyErr {
    raise(&INVALID_DTYPE, message.into())
}

pub fn from_kernel(err: KernelError) -> PyErr {
    match err.kind {
        ErrorKind::InvalidArgument => raise(&INVALID_ARGUMENT, err.message),
        ErrorKind::NonFinite => raise(&NON_FINITE, err.message),
    }
}
