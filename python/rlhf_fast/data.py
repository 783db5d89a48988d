"""Loading and validating the three kinds of training data.

- **Preference pairs** for the reward model, in either of two forms::

      {"prompt": str, "chosen": str, "rejected": str}
      {"prompt": str, "candidate_0": str, "candidate_1": str, "choice": 0 | 1}

  The second is the form hosted RLHF pipelines export: ``choice`` is the index of the
  preferred candidate (an ``int``; ``True``/``False`` and ``1.0`` are rejected).
- **Prompts** for PPO: ``{"prompt": str}`` (the field name is configurable).
- **SFT examples**: ``{"prompt": str, "response": str}``, or ``{"text": str}`` (a plain
  text with an empty prompt, so the loss covers every token).

Each loader takes a JSONL path (``.jsonl``/``.ndjson``; ``.json`` holding a JSON
array or JSON lines), a Parquet path (read through Hugging Face ``datasets``), a
``datasets.Dataset``, a pandas ``DataFrame``, or a list (any iterable) of dicts. Extra
fields are ignored.

A malformed record (not an object, missing field, wrong type, ``choice`` not 0/1,
empty text, a line that is not JSON) raises :class:`DataValidationError`, whose
message names the file, the place and the field::

    reviews.jsonl: line 7: field 'choice': expected 0 or 1 (int), got True (bool)

Places are 1-based line numbers for JSON lines (what an editor shows) and 0-based row
indices for Parquet files, datasets and lists (what ``dataset[i]`` takes). A JSONL line
that is not valid UTF-8 is such a record too. With ``skip_invalid=True`` bad records are
skipped instead; the count is logged as a warning and returned in the ``report``
attribute of the returned list (:class:`LoadReport`). A preference pair whose chosen and
rejected texts are the same teaches the reward model nothing: it is skipped and counted
the same way (``identical="error"`` stops on it instead). Nothing is dropped silently.
Each kept record's place is in the list's ``places``, so a later check (a prompt longer
than the policy's context, :func:`drop_too_long`) can name it too.
"""

from __future__ import annotations

import json
import logging
import numbers
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generic, Literal, TypeVar, Union

from rlhf_fast.errors import InvalidArgumentError

__all__ = [
    "DataValidationError",
    "LoadReport",
    "LoadedRecords",
    "PreferencePair",
    "SFTExample",
    "drop_too_long",
    "load_preference_pairs",
    "load_prompts",
    "load_sft_examples",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: What the loaders accept.
DataSource = Union[str, "os.PathLike[str]", Iterable[Mapping[str, Any]], Any]

_JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
_PARQUET_SUFFIXES = (".parquet", ".pq")
# At most this many error messages are kept in a LoadReport (the count is exact).
_MAX_KEPT_ERRORS = 100


@dataclass(frozen=True)
class PreferencePair:
    """One human (or simulated) judgement: ``chosen`` was preferred over ``rejected``."""

    prompt: str
    chosen: str
    rejected: str


@dataclass(frozen=True)
class SFTExample:
    """One supervised example; the loss covers the ``response`` tokens only."""

    prompt: str
    response: str


class DataValidationError(InvalidArgumentError):
    """A record of a data file is malformed.

    Attributes: ``source`` (file path or a description such as ``<list>``),
    ``unit`` (``"line"`` or ``"row"``), ``index`` (1-based line or 0-based row),
    ``field`` (the offending field, or ``None`` when the record as a whole is bad)
    and ``reason``.
    """

    def __init__(self, source: str, unit: str, index: int, field: str | None, reason: str) -> None:
        self.source = source
        self.unit = unit
        self.index = index
        self.field = field
        self.reason = reason
        where = f"{source}: {unit} {index}"
        what = f"field {field!r}: {reason}" if field is not None else reason
        super().__init__(f"{where}: {what}")


@dataclass
class LoadReport:
    """What a loader read: records kept, records skipped (``n_skipped``, and per reason in
    ``skipped``: ``{"invalid": 2, "identical pair": 1}``) and why (first 100 messages)."""

    source: str
    n_loaded: int = 0
    n_skipped: int = 0
    errors: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    unit: str = "row"

    def skip(self, reason: str, message: str) -> None:
        self.n_skipped += 1
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        if len(self.errors) < _MAX_KEPT_ERRORS:
            self.errors.append(message)


class LoadedRecords(list, Generic[T]):  # type: ignore[type-arg]
    """A plain ``list`` of records that also carries its :class:`LoadReport` as ``.report``
    and, in ``.places``, each record's line (JSONL, 1-based) or row (0-based)."""

    report: LoadReport
    places: list[int]

    def __init__(
        self, records: Iterable[T], report: LoadReport, places: Iterable[int] | None = None
    ) -> None:
        super().__init__(records)
        self.report = report
        self.places = list(places) if places is not None else list(range(len(self)))


# ----------------------------------------------------------------- reading sources
def _describe_type(value: Any) -> str:
    return type(value).__name__


def _short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _invalid_utf8(path: Path, line_number: int, raw: bytes, exc: UnicodeDecodeError):
    return DataValidationError(
        str(path),
        "line",
        line_number,
        None,
        f"invalid UTF-8: byte 0x{raw[exc.start]:02x} at byte {exc.start + 1} of the line "
        "(re-save the file as UTF-8)",
    )


def _iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, parsed_or_error)``; blank lines are not records."""
    with path.open("rb") as handle:  # bytes: a bad byte is one bad line, not a crash
        for line_number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8-sig" if line_number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                yield line_number, _invalid_utf8(path, line_number, raw, exc)
                continue
            if not line.strip():
                continue
            try:
                yield line_number, json.loads(line)
            except json.JSONDecodeError as exc:
                yield (
                    line_number,
                    DataValidationError(
                        str(path),
                        "line",
                        line_number,
                        None,
                        f"invalid JSON: {exc.msg} (column {exc.colno})",
                    ),
                )


def _iter_json_array(path: Path) -> Iterator[tuple[int, Any]]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line_start = raw.rfind(b"\n", 0, exc.start) + 1
        line_number = raw.count(b"\n", 0, exc.start) + 1
        shifted = UnicodeDecodeError("utf-8", raw, exc.start - line_start, exc.end, exc.reason)
        raise _invalid_utf8(path, line_number, raw[line_start:], shifted) from None
    try:
        records = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataValidationError(
            str(path), "line", exc.lineno, None, f"invalid JSON: {exc.msg} (column {exc.colno})"
        ) from None
    if not isinstance(records, list):
        raise DataValidationError(
            str(path),
            "line",
            1,
            None,
            f"expected a JSON array of objects, got {_describe_type(records)}",
        )
    yield from enumerate(records)


def _starts_with_bracket(path: Path) -> bool:
    with path.open("rb") as handle:
        head = handle.read(4096).removeprefix(b"\xef\xbb\xbf").lstrip()
    return head.startswith(b"[")


def _open_source(source: DataSource) -> tuple[str, str, Iterator[tuple[int, Any]]]:
    """Return ``(description, unit, iterator of (index, record))`` for any accepted source."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise InvalidArgumentError(f"data source {str(path)!r}: no such file")
        suffix = path.suffix.lower()
        if suffix in _PARQUET_SUFFIXES:
            return str(path), "row", _iter_rows(_read_parquet(path))
        if suffix in _JSONL_SUFFIXES:
            if suffix == ".json" and _starts_with_bracket(path):
                return str(path), "row", _iter_json_array(path)
            return str(path), "line", _iter_jsonl(path)
        raise InvalidArgumentError(
            f"data source {str(path)!r}: unknown file type {suffix!r}; expected one of "
            f"{', '.join(_JSONL_SUFFIXES + _PARQUET_SUFFIXES)}"
        )
    if isinstance(source, Mapping):
        kind = type(source).__name__
        hint = " (a DatasetDict: pick a split, e.g. data['train'])" if "Dict" in kind else ""
        raise InvalidArgumentError(
            f"data source: expected a path, a datasets.Dataset or a list of dicts, got {kind}{hint}"
        )
    if isinstance(source, (bytes, bytearray)) or not isinstance(source, Iterable):
        raise InvalidArgumentError(
            "data source: expected a path, a datasets.Dataset or a list of dicts, "
            f"got {_describe_type(source)}"
        )
    description = f"<{type(source).__name__}>"
    if hasattr(source, "columns") and hasattr(source, "to_dict"):  # a pandas DataFrame
        return description, "row", _iter_rows(source.to_dict("records"))
    return description, "row", _iter_rows(source)


def _read_parquet(path: Path) -> Any:
    # Heavy imports, only when a Parquet file is read. The Arrow table is wrapped in a
    # datasets.Dataset directly: Dataset.from_parquet would leave a cache entry behind
    # in ~/.cache/huggingface for every file read.
    import datasets
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... for a bad file
        raise InvalidArgumentError(f"{path}: not a readable Parquet file: {exc}") from None
    return datasets.Dataset(table)


def _iter_rows(rows: Iterable[Any]) -> Iterator[tuple[int, Any]]:
    yield from enumerate(rows)


# ------------------------------------------------------------------ field checks
class _RecordChecker:
    """Field accessors that raise DataValidationError with the record's place."""

    def __init__(self, source: str, unit: str, index: int, record: Any) -> None:
        self.source, self.unit, self.index = source, unit, index
        if not isinstance(record, Mapping):
            raise self.error(
                None, f"expected an object with named fields, got {_describe_type(record)}"
            )
        self.record = record

    def error(self, field_name: str | None, reason: str) -> DataValidationError:
        return DataValidationError(self.source, self.unit, self.index, field_name, reason)

    def has(self, name: str) -> bool:
        return name in self.record

    def text(self, name: str, *, allow_empty: bool = False) -> str:
        if name not in self.record:
            raise self.error(name, "missing")
        value = self.record[name]
        if not isinstance(value, str):
            raise self.error(
                name, f"expected a string, got {_short_repr(value)} ({_describe_type(value)})"
            )
        if not allow_empty and not value.strip():
            raise self.error(name, "empty text")
        return value

    def choice(self, name: str) -> int:
        if name not in self.record:
            raise self.error(name, "missing")
        value = self.record[name]
        # bool is a subclass of int, but True/False here is almost always a mislabelled column.
        is_int = isinstance(value, numbers.Integral) and not isinstance(
            value, bool
        )  # numpy ints too
        if not is_int or value not in (0, 1):
            raise self.error(
                name, f"expected 0 or 1 (int), got {_short_repr(value)} ({_describe_type(value)})"
            )
        return int(value)


class _Skip(Exception):
    """Raised by a record parser for a well-formed record that is skipped, with a reason."""

    def __init__(self, reason: str, error: DataValidationError) -> None:
        super().__init__(str(error))
        self.reason = reason


def _load(
    source: DataSource,
    parse: Callable[[_RecordChecker], T],
    *,
    skip_invalid: bool,
    what: str,
) -> LoadedRecords[T]:
    description, unit, rows = _open_source(source)
    report = LoadReport(source=description, unit=unit)
    records: list[T] = []
    places: list[int] = []
    for index, raw in rows:
        try:
            if isinstance(raw, DataValidationError):
                raise raw
            records.append(parse(_RecordChecker(description, unit, index, raw)))
            places.append(index)
        except _Skip as skip:
            report.skip(skip.reason, str(skip))
        except DataValidationError as exc:
            if not skip_invalid:
                raise
            report.skip("invalid", str(exc))
    report.n_loaded = len(records)
    _warn_skipped(report, what)
    if not records:
        raise InvalidArgumentError(
            f"{description}: no valid {what} records"
            + (
                f" ({report.n_skipped} skipped: {_reasons(report)})"
                if report.n_skipped
                else " (empty source)"
            )
        )
    return LoadedRecords(records, report, places)


def _reasons(report: LoadReport) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in report.skipped.items())


def _warn_skipped(report: LoadReport, what: str) -> None:
    if report.n_skipped:
        logger.warning(
            "%s: skipped %d %s record(s) of %d (%s); first: %s",
            report.source,
            report.n_skipped,
            what,
            report.n_skipped + report.n_loaded,
            _reasons(report),
            report.errors[0],
        )


def drop_too_long(
    records: LoadedRecords[T],
    n_tokens: Iterable[int],
    limit: int,
    *,
    field: str,
    why: str,
    skip_invalid: bool = False,
) -> LoadedRecords[T]:
    """Check ``records`` against a token budget: ``n_tokens[i] > limit`` is an error naming
    the record's place, ``field``, its length, ``limit`` and ``why``; with ``skip_invalid``
    such records are dropped instead and counted in the report (reason ``"too long"``).
    """
    report = records.report
    kept: list[T] = []
    places: list[int] = []
    for record, place, n in zip(records, records.places, n_tokens):
        if n <= limit:
            kept.append(record)
            places.append(place)
            continue
        error = DataValidationError(
            report.source, report.unit, place, field, f"{n} tokens, more than the {limit} {why}"
        )
        if not skip_invalid:
            raise error
        report.skip("too long", str(error))
    if len(kept) == len(records):
        return records
    report.n_loaded = len(kept)
    _warn_skipped(report, field)
    if not kept:
        raise InvalidArgumentError(
            f"{report.source}: no {field} fits: every one is longer than {limit} tokens ({why})"
        )
    return LoadedRecords(kept, report, places)


# ---------------------------------------------------------------------- loaders
def load_preference_pairs(
    source: DataSource,
    *,
    skip_invalid: bool = False,
    allow_empty_prompt: bool = False,
    identical: Literal["skip", "error"] = "skip",
) -> LoadedRecords[PreferencePair]:
    """Load preference pairs in the ``chosen/rejected`` or ``candidate_0/1 + choice`` form.

    The form is decided per record: a record with ``chosen`` or ``rejected`` must
    have both; otherwise it must have ``candidate_0``, ``candidate_1`` and ``choice``.

    Args:
        source: JSONL/Parquet path, ``datasets.Dataset`` or list of dicts.
        skip_invalid: skip malformed records (counted in ``.report`` and logged)
            instead of raising :class:`DataValidationError`.
        allow_empty_prompt: accept ``""`` as a prompt (unconditional pairs).
        identical: a pair whose chosen and rejected texts are equal is skipped and
            counted (``"skip"``, reason ``"identical pair"``) or an error (``"error"``).

    Returns:
        A list of :class:`PreferencePair` with a ``.report`` (:class:`LoadReport`).
    """

    def parse(rec: _RecordChecker) -> PreferencePair:
        prompt = rec.text("prompt", allow_empty=allow_empty_prompt)
        if (
            rec.has("chosen")
            or rec.has("rejected")
            or not (rec.has("candidate_0") or rec.has("candidate_1") or rec.has("choice"))
        ):
            if not rec.has("chosen") and not rec.has("rejected"):
                raise rec.error(
                    "chosen",
                    "missing (a preference pair needs either chosen/rejected "
                    "or candidate_0/candidate_1/choice)",
                )
            return distinct(rec, PreferencePair(prompt, rec.text("chosen"), rec.text("rejected")))
        candidates = (rec.text("candidate_0"), rec.text("candidate_1"))
        choice = rec.choice("choice")
        return distinct(rec, PreferencePair(prompt, candidates[choice], candidates[1 - choice]))

    def distinct(rec: _RecordChecker, pair: PreferencePair) -> PreferencePair:
        if pair.chosen != pair.rejected:
            return pair
        error = rec.error(
            "rejected" if rec.has("rejected") else "candidate_1",
            "the same text as the chosen response (the pair teaches nothing)",
        )
        if identical == "error":
            raise error
        raise _Skip("identical pair", error)

    if identical not in ("skip", "error"):
        raise InvalidArgumentError(f"identical: expected 'skip' or 'error', got {identical!r}")
    return _load(source, parse, skip_invalid=skip_invalid, what="preference pair")


def load_prompts(
    source: DataSource, *, field: str = "prompt", skip_invalid: bool = False
) -> LoadedRecords[str]:
    """Load prompts from the string field ``field`` of each record (non-empty).

    A list of plain strings is accepted too (each one a prompt).
    """
    if isinstance(source, (list, tuple)) and source and all(isinstance(s, str) for s in source):
        source = [{field: text} for text in source]

    def parse(rec: _RecordChecker) -> str:
        return rec.text(field)

    return _load(source, parse, skip_invalid=skip_invalid, what="prompt")


def load_sft_examples(
    source: DataSource, *, skip_invalid: bool = False
) -> LoadedRecords[SFTExample]:
    """Load SFT examples: ``{prompt, response}`` (prompt may be ``""``) or ``{text}``.

    A record with ``text`` and no ``response`` becomes ``SFTExample("", text)``.
    """

    def parse(rec: _RecordChecker) -> SFTExample:
        if rec.has("text") and not rec.has("response"):
            return SFTExample("", rec.text("text"))
        if not rec.has("response") and not rec.has("prompt"):
            raise rec.error("response", "missing (an SFT example needs prompt/response or text)")
        return SFTExample(rec.text("prompt", allow_empty=True), rec.text("response"))

    return _load(source, parse, skip_invalid=skip_invalid, what="SFT")
