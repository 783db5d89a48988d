"""rlhf_fast: RLHF for language models with the per-token math in Rust.

The kernels (``gae``, ``kl_shaped_rewards``, ``masked_whiten``, ...) live in
``rlhf_fast.ops`` and are re-exported here; models, data and trainers are
sub-modules imported on demand (they need torch and transformers).
"""

from rlhf_fast._native import __version__, get_num_threads, set_num_threads
from rlhf_fast.buffer import RolloutBuffer
from rlhf_fast.errors import (
    InvalidArgumentError,
    InvalidDtypeError,
    NonFiniteError,
    RlhfFastError,
)
from rlhf_fast.ops import (
    gae,
    group_advantages,
    kl_shaped_rewards,
    masked_mean,
    masked_var,
    masked_whiten,
    minibatch_indices,
    pad_ragged,
    permutation,
)

__all__ = [
    "InvalidArgumentError",
    "InvalidDtypeError",
    "NonFiniteError",
    "RlhfFastError",
    "RolloutBuffer",
    "__version__",
    "gae",
    "get_num_threads",
    "group_advantages",
    "kl_shaped_rewards",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "minibatch_indices",
    "pad_ragged",
    "permutation",
    "set_num_threads",
]
