"""``RolloutBuffer``: variable-length rollouts in flat storage, served as padded minibatches.

Each rollout has per-token fields (token ids, logprobs, values, advantages, ...; one
1-D array per field, all of the rollout's length) and per-rollout scalar fields
(score, prompt id, ...). Per-token fields live concatenated in one growable flat
array per field, with int64 offsets marking where each rollout starts, so appending
is amortised O(new tokens) and nothing loops over tokens in Python. ``minibatches``
shuffles the rollouts with a seed and pads each minibatch in Rust
(``pad_ragged(..., indices=...)``, one gather per field).

Example:
    >>> import numpy as np
    >>> buf = RolloutBuffer({"input_ids": np.int64, "logprobs": np.float32}, {"score": np.float32})
    >>> buf.add(input_ids=np.array([5, 6, 7]), logprobs=np.array([-0.1, -0.2, -0.3]), score=1.0)
    >>> buf.add(input_ids=[np.array([8]), np.array([9, 10])],
    ...         logprobs=[np.array([-1.0]), np.array([-0.5, -0.5])], score=[0.0, 2.0])
    >>> len(buf), buf.num_tokens
    (3, 6)
    >>> batch = next(buf.minibatches(3, seed=0, side="left"))
    >>> sorted(batch) == ["indices", "input_ids", "logprobs", "mask", "score"]
    True
    >>> batch["input_ids"].shape, batch["mask"].dtype
    ((3, 3), dtype('bool'))
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Union

import numpy as np

from rlhf_fast import ops
from rlhf_fast.errors import InvalidArgumentError, InvalidDtypeError

__all__ = ["RolloutBuffer", "minibatch_order", "prompt_response_buffer"]

_FIELD_DTYPES = tuple(np.dtype(d) for d in (np.float32, np.float64, np.int64, np.int32, np.uint8))
_RESERVED = ("mask", "indices")
LENGTH_BUCKET = 8  # tokens: rollouts this close in length count as equally long


def _as_numpy(x: Any, name: str) -> np.ndarray:
    """A numpy view (or host copy for device tensors) of an array, tensor or list."""
    if ops._is_tensor(x):
        return ops._tensor_to_host(x).numpy()
    try:
        return np.asarray(x)
    except (ValueError, TypeError) as err:
        raise InvalidArgumentError(f"RolloutBuffer.add: {name} is not an array ({err})") from err


class _Growable:
    """A 1-D numpy array with spare capacity that doubles when full."""

    def __init__(self, dtype: np.dtype, capacity: int = 1024):
        self.data = np.empty(capacity, dtype=dtype)
        self.size = 0

    def reserve(self, extra: int) -> np.ndarray:
        """Grows if needed and returns the slice of the next ``extra`` elements."""
        need = self.size + extra
        if need > self.data.shape[0]:
            grown = np.empty(max(need, 2 * self.data.shape[0]), dtype=self.data.dtype)
            grown[: self.size] = self.data[: self.size]
            self.data = grown
        view = self.data[self.size : need]
        self.size = need
        return view

    def view(self) -> np.ndarray:
        return self.data[: self.size]


class RolloutBuffer:
    """Variable-length rollouts in flat storage with offsets.

    Args:
        token_fields: per-token field names and dtypes, e.g.
            ``{"input_ids": np.int64, "logprobs": np.float32}``. Dtypes:
            float32, float64, int64, int32 or uint8.
        scalar_fields: per-rollout field names and dtypes, e.g. ``{"score": np.float32}``.

    Fields named ``mask`` or ``indices`` are reserved for ``minibatches``' output.
    Added data is cast to the declared dtype (``same_kind`` casting: int64 ids into an
    int32 field are fine, floats into an int field are an error).
    """

    def __init__(
        self,
        token_fields: Mapping[str, Any],
        scalar_fields: Mapping[str, Any] | None = None,
    ):
        scalar_fields = dict(scalar_fields or {})
        if not token_fields:
            raise InvalidArgumentError(
                "RolloutBuffer: token_fields must name at least one per-token field, e.g. "
                "{'input_ids': np.int64}"
            )
        for name, dtype in {**token_fields, **scalar_fields}.items():
            if name in _RESERVED:
                raise InvalidArgumentError(
                    f"RolloutBuffer: field name {name!r} is reserved for minibatch output; "
                    "rename it"
                )
            if name in token_fields and name in scalar_fields:
                raise InvalidArgumentError(
                    f"RolloutBuffer: {name!r} is both a token field and a scalar field"
                )
            if np.dtype(dtype) not in _FIELD_DTYPES:
                allowed = ", ".join(str(d) for d in _FIELD_DTYPES)
                raise InvalidDtypeError(
                    f"RolloutBuffer: field {name!r} has dtype {np.dtype(dtype)}; use one of "
                    f"{allowed}"
                )
        self._token_dtypes = {k: np.dtype(v) for k, v in token_fields.items()}
        self._scalar_dtypes = {k: np.dtype(v) for k, v in scalar_fields.items()}
        self.clear()

    # -------------------------------------------------------------- storage
    def clear(self) -> None:
        """Drops every rollout (keeps the field definitions)."""
        self._tokens = {k: _Growable(d) for k, d in self._token_dtypes.items()}
        self._scalars = {k: _Growable(d, 64) for k, d in self._scalar_dtypes.items()}
        self._offsets = _Growable(np.dtype(np.int64), 65)
        self._offsets.reserve(1)[0] = 0

    def __len__(self) -> int:
        """Number of rollouts stored."""
        return self._offsets.size - 1

    @property
    def num_tokens(self) -> int:
        """Total number of tokens over all rollouts."""
        return int(self._offsets.view()[-1])

    @property
    def offsets(self) -> np.ndarray:
        """``[len + 1]`` int64: rollout ``i`` is ``tokens(field)[offsets[i]:offsets[i + 1]]``."""
        return self._offsets.view()

    @property
    def lengths(self) -> np.ndarray:
        """``[len]`` int64 rollout lengths."""
        return np.diff(self._offsets.view())

    def tokens(self, field: str) -> np.ndarray:
        """The flat ``[num_tokens]`` storage of a per-token field (a view)."""
        return self._tokens[field].view()

    def scalars(self, field: str) -> np.ndarray:
        """The ``[len]`` values of a per-rollout field (a view)."""
        return self._scalars[field].view()

    def __getitem__(self, i: int) -> dict[str, Any]:
        """Rollout ``i`` as a dict of 1-D views and scalars."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"RolloutBuffer index {i} out of range for {n} rollouts")
        i %= n
        start, stop = self._offsets.view()[i : i + 2]
        item: dict[str, Any] = {k: g.view()[start:stop] for k, g in self._tokens.items()}
        item.update({k: g.view()[i] for k, g in self._scalars.items()})
        return item

    # -------------------------------------------------------------- adding
    def add(self, **fields: Any) -> None:
        """Appends one rollout or many; every declared field must be given.

        One rollout: each token field a 1-D array/tensor/list (all of one length),
        each scalar field a number.

        Many rollouts: each token field a list/tuple of ``B`` 1-D arrays (row ``i`` of
        every field has one length), each scalar field ``B`` numbers (list or ``[B]``
        array). A list is read as many rollouts when its first element is an array,
        tensor or list.
        """
        self._check_names(fields)
        first = fields[next(iter(self._token_dtypes))]
        many = (
            isinstance(first, (list, tuple))
            and len(first) > 0
            and (isinstance(first[0], (np.ndarray, list, tuple)) or ops._is_tensor(first[0]))
        )
        if many:
            self._add_many(fields)
        else:
            self._add_many(
                {
                    k: [v] if k in self._token_dtypes else _as_numpy(v, k).reshape(1)
                    for k, v in fields.items()
                }
            )

    def _check_names(self, fields: Mapping[str, Any]) -> None:
        expected = set(self._token_dtypes) | set(self._scalar_dtypes)
        missing, unknown = expected - set(fields), set(fields) - expected
        if missing or unknown:
            raise InvalidArgumentError(
                f"RolloutBuffer.add: expected exactly the fields {sorted(expected)}; "
                f"missing {sorted(missing)}, unknown {sorted(unknown)}"
            )

    def _add_many(self, fields: Mapping[str, Any]) -> None:
        lengths: np.ndarray | None = None
        length_from = ""
        token_arrays: dict[str, list[np.ndarray]] = {}
        for name in self._token_dtypes:
            rows = fields[name]
            if not isinstance(rows, (list, tuple)):
                raise InvalidArgumentError(
                    f"RolloutBuffer.add: {name} must be a list of 1-D arrays when adding "
                    f"many rollouts, got {type(rows).__name__}"
                )
            arrays = [_as_numpy(r, f"{name}[{i}]") for i, r in enumerate(rows)]
            for i, a in enumerate(arrays):
                if a.ndim != 1:
                    raise InvalidArgumentError(
                        f"RolloutBuffer.add: {name}[{i}] must be 1-D (one value per token), "
                        f"got shape {a.shape}"
                    )
            row_lengths = np.fromiter((a.shape[0] for a in arrays), np.int64, len(arrays))
            if lengths is None:
                lengths, length_from = row_lengths, name
            elif row_lengths.shape != lengths.shape or (row_lengths != lengths).any():
                raise InvalidArgumentError(
                    f"RolloutBuffer.add: {name} and {length_from} must give the same number "
                    f"of rollouts with the same lengths; got lengths "
                    f"{row_lengths.tolist()[:8]} and {lengths.tolist()[:8]}"
                )
            token_arrays[name] = arrays
        assert lengths is not None
        self._append(token_arrays, lengths, fields)

    def add_padded(self, mask: Any, **fields: Any) -> None:
        """Appends ``B`` rollouts given as padded ``[B, L]`` arrays and a ``[B, L]`` mask.

        Rollout ``i`` is ``field[i][mask[i]]`` for every token field (so left, right and
        holey padding all work); scalar fields give ``B`` values. One boolean selection
        per field, no loop over rows: this is how a trainer's padded rollout goes in.
        """
        self._check_names(fields)
        keep = _as_numpy(mask, "mask")
        if keep.ndim != 2:
            raise InvalidArgumentError(
                f"RolloutBuffer.add_padded: mask must be [B, L], got shape {keep.shape}"
            )
        keep = keep.astype(bool, copy=False)
        flat: dict[str, list[np.ndarray]] = {}
        for name in self._token_dtypes:
            values = _as_numpy(fields[name], name)
            if values.shape != keep.shape:
                raise InvalidArgumentError(
                    f"RolloutBuffer.add_padded: {name} must have the mask's shape "
                    f"{keep.shape}, got {values.shape}"
                )
            flat[name] = [values[keep]]
        self._append(flat, keep.sum(axis=1, dtype=np.int64), fields)

    def _append(
        self,
        token_arrays: Mapping[str, list[np.ndarray]],
        lengths: np.ndarray,
        fields: Mapping[str, Any],
    ) -> None:
        """Writes rollouts whose token fields are given as pieces to concatenate."""
        count = lengths.shape[0]
        scalar_arrays = {}
        for name in self._scalar_dtypes:
            values = _as_numpy(fields[name], name).reshape(-1)
            if values.shape[0] != count:
                raise InvalidArgumentError(
                    f"RolloutBuffer.add: {name} must give one value per rollout ({count}), "
                    f"got {values.shape[0]}"
                )
            scalar_arrays[name] = values
        # Validate every cast before writing anything, so a failed add leaves no trace.
        for name, arrays in token_arrays.items():
            for i, a in enumerate(arrays):
                self._check_cast(a.dtype, self._token_dtypes[name], f"{name}[{i}]")
        for name, values in scalar_arrays.items():
            self._check_cast(values.dtype, self._scalar_dtypes[name], name)
        total = int(lengths.sum())
        for name, arrays in token_arrays.items():
            slot = self._tokens[name].reserve(total)
            if arrays:
                np.concatenate(arrays, out=slot, casting="unsafe")
        for name, values in scalar_arrays.items():
            self._scalars[name].reserve(count)[:] = values
        if count == 0:
            return
        end = self._offsets.view()[-1]
        np.cumsum(lengths, out=self._offsets.reserve(count))
        self._offsets.view()[-count:] += end

    @staticmethod
    def _check_cast(given: np.dtype, stored: np.dtype, name: str) -> None:
        if not np.can_cast(given, stored, casting="same_kind"):
            raise InvalidDtypeError(
                f"RolloutBuffer.add: {name} has dtype {given}, which does not cast safely to "
                f"the field's dtype {stored}; convert it first"
            )

    # -------------------------------------------------------------- reading
    def minibatches(
        self,
        minibatch_size: int,
        seed: int,
        *,
        pad_value: Union[float, Mapping[str, float]] = 0,
        side: str = "right",
        length: int | None = None,
        drop_last: bool = False,
        as_torch: bool = False,
        device: Any = None,
        group_by_length: bool = False,
    ) -> Iterator[dict[str, Any]]:
        """Yields shuffled, padded minibatches; the same seed gives the same batches.

        Args:
            minibatch_size: rollouts per minibatch (the last one is shorter unless
                ``drop_last``).
            seed: int >= 0 for the shuffle (``rlhf_fast.minibatch_indices``).
            pad_value: value in the padding, one for all fields or a dict per field
                (missing fields pad with 0).
            side: ``"right"`` or ``"left"`` padding.
            length: pad every minibatch to this length (static shapes); default: the
                longest rollout in the minibatch.
            drop_last: skip a final short minibatch.
            as_torch: yield torch tensors (moved to ``device`` when given).
            group_by_length: fill each minibatch with rollouts of similar length, so less
                of it is padding. Rollouts within ``LENGTH_BUCKET`` tokens of each other are
                interchangeable: the seeded shuffle decides who goes together among them,
                and the order of the minibatches is shuffled too.

        Yields:
            dicts with every token field ``[M, L]``, ``"mask"`` ``[M, L]`` bool, every
            scalar field ``[M]`` and ``"indices"`` ``[M]`` int64 (rollout numbers).
        """
        pads = dict(pad_value) if isinstance(pad_value, Mapping) else None
        unknown = set(pads or {}) - set(self._token_dtypes)
        if unknown:
            raise InvalidArgumentError(
                f"RolloutBuffer.minibatches: pad_value names unknown token fields "
                f"{sorted(unknown)}; token fields are {sorted(self._token_dtypes)}"
            )
        if len(self) == 0:
            raise InvalidArgumentError(
                "RolloutBuffer.minibatches: the buffer is empty; add rollouts first"
            )
        offsets = self._offsets.view()
        batches = minibatch_order(
            self.lengths, minibatch_size, seed, drop_last=drop_last, group_by_length=group_by_length
        )
        for indices in batches:
            batch: dict[str, Any] = {}
            for name, store in self._tokens.items():
                pad: Any = pads.get(name, 0) if pads is not None else pad_value
                batch[name], batch["mask"] = ops.pad_ragged(
                    store.view(),
                    pad_value=pad,
                    side=side,
                    max_length=length,
                    offsets=offsets,
                    indices=indices,
                )
            for name, store in self._scalars.items():
                batch[name] = store.view()[indices]
            batch["indices"] = indices
            if as_torch:
                batch = _to_torch(batch, device)
            yield batch


def minibatch_order(
    lengths: np.ndarray,
    minibatch_size: int,
    seed: int,
    *,
    drop_last: bool = False,
    group_by_length: bool = False,
) -> list[np.ndarray]:
    """The rollout numbers of each minibatch, as ``RolloutBuffer.minibatches`` draws them.

    ``lengths``: ``[N]`` tokens per rollout (read only with ``group_by_length``). A seeded
    shuffle (``ops.minibatch_indices``) cut into minibatches; with ``group_by_length`` the
    shuffled order is regrouped by ``LENGTH_BUCKET`` (ties keep their shuffled order) and
    the minibatches themselves are shuffled.
    """
    n = len(lengths)
    if not group_by_length:
        return ops.minibatch_indices(n, minibatch_size, seed=seed, drop_last=drop_last)
    # Regroup every rollout, then drop the short minibatch.
    order = np.concatenate(list(ops.minibatch_indices(n, minibatch_size, seed=seed)))
    buckets = np.asarray(lengths)[order] // LENGTH_BUCKET
    order = order[np.argsort(-buckets, kind="stable")]
    grouped = [order[i : i + minibatch_size] for i in range(0, len(order), minibatch_size)]
    if drop_last and grouped[-1].shape[0] < minibatch_size:
        grouped.pop()
    rng = np.random.default_rng(seed)
    return [grouped[i] for i in rng.permutation(len(grouped))]


def prompt_response_buffer(
    sequences: Any,
    attention_mask: Any,
    response_mask: Any,
    per_token: Mapping[str, Any],
    per_row: Mapping[str, Any] | None = None,
) -> RolloutBuffer:
    """One buffer row per response of a trainer's rollout: its prompt + response tokens.

    ``sequences``, ``attention_mask``: ``[B, Lq + T]`` (prompt left-padded, response
    right-padded); ``response_mask``: ``[B, T]``; ``per_token``: ``[B, T]`` response-aligned
    fields, stored as float32 with 0 on prompt tokens; ``per_row``: ``[B]`` scalar fields
    (float32). ``is_response`` marks the response tokens. A row's tokens are exactly its
    attended positions, so the rollout goes in as one boolean selection per field.
    """

    def host(x: Any, name: str) -> np.ndarray:
        if ops._is_tensor(x):
            x = x.detach()
            x = x.float() if x.is_floating_point() else x
        return _as_numpy(x, name)

    ids = host(sequences, "sequences")
    keep = host(attention_mask, "attention_mask").astype(bool)
    response = host(response_mask, "response_mask").astype(bool)
    n_prompt = ids.shape[1] - response.shape[1]

    def widened(x: np.ndarray, dtype: Any) -> np.ndarray:  # (B, T) -> (B, Lq + T), 0 on prompt
        out = np.zeros(ids.shape, dtype=dtype)
        out[:, n_prompt:] = x
        return out

    tokens = {"input_ids": ids, "is_response": widened(response, np.uint8)}
    tokens.update({k: widened(host(v, k), np.float32) for k, v in per_token.items()})
    scalars = {k: host(v, k).astype(np.float32).reshape(-1) for k, v in (per_row or {}).items()}
    buffer = RolloutBuffer(
        {k: v.dtype for k, v in tokens.items()}, {k: v.dtype for k, v in scalars.items()}
    )
    buffer.add_padded(keep, **tokens, **scalars)
    return buffer


def _to_torch(batch: dict[str, np.ndarray], device: Any) -> dict[str, Any]:
    import torch  # only needed for as_torch=True

    out = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}
    if device is not None:
        out = {k: v.to(device) for k, v in out.items()}
    return out
