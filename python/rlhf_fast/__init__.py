"""rlhf_fast: RLHF for language models with the per-token math in Rust.

The kernels (``gae``, ``kl_shaped_rewards``, ``masked_whiten``, ...) live in
``rlhf_fast.ops`` and are re-exported here; models, data and trainers are
sub-modules imported on demand (they need torch and transformers).
"""

from rlhf_fast._native import __version__, get_num_threads, set_num_threads
from rlhf_fast.errors import (
    InvalidArgumentError,
    InvalidDtypeError,
    NonFiniteError,
    RlhfFastError,
)

__all__ = [
    "InvalidArgumentError",
    "InvalidDtypeError",
    "NonFiniteError",
    "RlhfFastError",
    "__version__",
    "get_num_threads",
    "set_num_threads",
]
