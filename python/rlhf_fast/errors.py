"""The exceptions rlhf_fast raises.

They are defined in the Rust extension (so kernels and Python code raise the same
classes) and re-exported here. Each also derives from the built-in exception a
caller would expect, so ``except ValueError`` keeps working.

- ``RlhfFastError``: base of them all.
- ``InvalidArgumentError(RlhfFastError, ValueError)``: wrong shape, value or range.
- ``InvalidDtypeError(RlhfFastError, TypeError)``: wrong dtype or kind of object.
- ``NonFiniteError(InvalidArgumentError)``: NaN or Inf where a finite number is due.
"""

from rlhf_fast._native import (
    InvalidArgumentError,
    InvalidDtypeError,
    NonFiniteError,
    RlhfFastError,
)

__all__ = ["InvalidArgumentError", "InvalidDtypeError", "NonFiniteError", "RlhfFastError"]
