"""The preference file: every choice appended and fsync'd, read back on a restart.

One JSON object per line, in the form ``rlhf-fast train-reward`` reads as it is::

    {"prompt": ..., "candidate_0": ..., "candidate_1": ..., "choice": 0,
     "annotator": "ana", "time": "2026-12-01T10:41:07.123456Z", "pair_id": "3f9c..."}

- ``candidate_0`` is the answer that was shown on the left, ``candidate_1`` the one on the
  right (each annotator sees a pair in a fixed, hashed orientation, so position bias can be
  measured), and ``choice`` is the index of the preferred one.
- **A tie** is written as two records, ``choice`` 0 and 1, both with ``"tie": true``. Read as
  pairs, that is half a win each, and the Bradley-Terry loss of the two,
  ``-log s(d) - log s(-d)``, is smallest at equal scores, which is what a tie says. A trainer
  that wants to drop ties filters on the ``tie`` field.
- **A skip** is not preference data and is not written here but to ``<stem>.skips.jsonl``
  (``{pair_id, annotator, time}``), so that the pair is not shown to that annotator again.
- **Undo** removes the annotator's last record(s) by writing the file anew and renaming it
  into place, so the file is never half-written.

A record (both halves of a tie) goes to disk in one ``write`` followed by ``fsync``, under a
lock, so several annotators at once never interleave lines and a crash loses at most the
choice in flight; a torn last line (power cut mid-write) is cut off on the next start. One
server at a time may own a preference file (an advisory ``flock`` on ``<file>.lock``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal, Optional

from rlhf_fast.data import DataValidationError
from rlhf_fast.errors import InvalidArgumentError
from rlhf_fast.label.pairs import Pair

try:  # POSIX; elsewhere only the in-process lock guards the file
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "AlreadyJudgedError",
    "Judgement",
    "PreferenceStore",
    "UnknownPairError",
    "Verdict",
    "skips_path_of",
]

logger = logging.getLogger(__name__)

Verdict = Literal["left", "right", "tie", "skip"]
VERDICTS: tuple[str, ...] = ("left", "right", "tie", "skip")


class UnknownPairError(InvalidArgumentError):
    """A pair id that is not among the pairs being labelled."""


class AlreadyJudgedError(InvalidArgumentError):
    """The annotator has already judged (or skipped) this pair."""


@dataclass(frozen=True)
class Judgement:
    """One annotator's verdict on one pair, as shown to them (``swapped``: candidate_1 on the left)."""

    pair_id: str
    annotator: str
    verdict: str
    swapped: bool
    time: str

    @property
    def winner(self) -> Optional[str]:
        """The verdict in the pair's own order: ``"0"``, ``"1"``, ``"tie"``, or ``None`` for a skip."""
        if self.verdict in ("tie", "skip"):
            return None if self.verdict == "skip" else "tie"
        return str(int(self.verdict == "right") ^ int(self.swapped))


def swapped_for(pair_id: str, annotator: str) -> bool:
    """Whether ``annotator`` sees ``pair_id`` with candidate_1 on the left: a fixed coin flip
    per (pair, annotator), so a reload shows the same layout and the sides are balanced."""
    return bool(hashlib.sha256(f"{pair_id}\0{annotator}".encode()).digest()[0] & 1)


def skips_path_of(out: Path) -> Path:
    """``prefs.jsonl`` -> ``prefs.skips.jsonl``."""
    return out.with_name(out.stem + ".skips.jsonl")


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _append_durably(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        _write_all(fd, text.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover (e.g. Windows: directories cannot be opened)
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_durably(path: Path, lines: Sequence[str]) -> None:
    """Write ``lines`` to a temporary file, fsync it, rename it over ``path``, fsync the folder."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _write_all(fd, "".join(lines).encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _read_lines(path: Path) -> list[str]:
    """The complete lines of ``path``; a torn last line (no newline: a write cut short) is
    cut off the file, with a warning."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        logger.warning(
            "%s: dropping an incomplete last line (%d bytes; a write was cut short)",
            path,
            len(data) - end,
        )
        with path.open("r+b") as handle:
            handle.truncate(end)
            handle.flush()
            os.fsync(handle.fileno())
    try:
        return data[:end].decode("utf-8").splitlines(keepends=True)
    except UnicodeDecodeError as exc:
        raise InvalidArgumentError(f"{path}: not UTF-8 text ({exc})") from None


class PreferenceStore:
    """The judgements of every annotator on ``pairs``, kept in memory and in ``out``.

    Thread-safe: every method takes the store's lock. Opening a store reads back what the
    files already hold (resume) and holds an advisory lock on ``<out>.lock`` until
    :meth:`close`, so a second server on the same file is refused.
    """

    def __init__(self, out: str | os.PathLike[str], pairs: Sequence[Pair]) -> None:
        self.out = Path(out)
        self.skips_path = skips_path_of(self.out)
        self.pairs: dict[str, Pair] = {p.pair_id: p for p in pairs}
        if len(self.pairs) != len(pairs):
            raise InvalidArgumentError("pairs: pair ids must be unique")
        self.order = {pair_id: i for i, pair_id in enumerate(self.pairs)}
        self._lock = threading.Lock()
        self._lock_file: Optional[int] = None
        self._judgements: list[Judgement] = []  # in the order they were made
        self._by_annotator: dict[str, dict[str, Judgement]] = {}
        self._assigned: dict[str, str] = {}  # annotator -> the pair on their screen
        self._acquire_file_lock()
        try:
            self._load()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ files
    def _acquire_file_lock(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.out.with_name(self.out.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise InvalidArgumentError(
                    f"out: {self.out} is in use by another rlhf-fast label server "
                    f"(lock {lock_path}); stop it or choose another --out"
                ) from None
        self._lock_file = fd

    def close(self) -> None:
        """Release the file lock (the files stay as they are)."""
        if self._lock_file is not None:
            os.close(self._lock_file)  # closing drops the flock
            self._lock_file = None

    def __enter__(self) -> PreferenceStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _load(self) -> None:
        for path in (self.out, self.skips_path):
            if not path.exists():
                path.touch()
                _fsync_dir(path.parent)
        loaded: list[Judgement] = []
        lines = _read_lines(self.out)
        half_tie: Optional[tuple[int, dict[str, Any]]] = None  # (line number, record)
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            record = self._parse(self.out, number, line, preference=True)
            if half_tie is not None:
                first = half_tie[1]
                if (
                    record.get("tie") is not True
                    or (record["pair_id"], record["annotator"])
                    != (first["pair_id"], first["annotator"])
                    or record["choice"] != 1 - first["choice"]
                ):
                    raise DataValidationError(
                        str(self.out), "line", half_tie[0], "tie", "a tie without its other half"
                    )
                half_tie = None
                continue
            if record.get("tie") is True:
                half_tie = (number, record)
            loaded.append(self._judgement_of(record))
        if half_tie is not None:
            # Both halves of a tie go out in one write: half of one at the end is a torn write.
            logger.warning("%s: dropping half a tie at the end (a write was cut short)", self.out)
            _replace_durably(self.out, lines[: half_tie[0] - 1])
            loaded.pop()
        for number, line in enumerate(_read_lines(self.skips_path), start=1):
            if line.strip():
                record = self._parse(self.skips_path, number, line, preference=False)
                loaded.append(self._judgement_of(record))
        seen: set[tuple[str, str]] = set()
        for judgement in sorted(loaded, key=lambda j: j.time):  # ISO times in UTC sort as text
            key = (judgement.pair_id, judgement.annotator)
            if key in seen:
                raise InvalidArgumentError(
                    f"{self.out}: pair {judgement.pair_id!r} judged twice by "
                    f"{judgement.annotator!r} (in {self.out.name} or {self.skips_path.name})"
                )
            seen.add(key)
            self._add(judgement)

    def _parse(self, path: Path, number: int, line: str, *, preference: bool) -> dict[str, Any]:
        def error(field: Optional[str], reason: str) -> DataValidationError:
            return DataValidationError(str(path), "line", number, field, reason)

        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise error(None, f"invalid JSON: {exc.msg} (column {exc.colno})") from None
        if not isinstance(record, dict):
            raise error(None, f"expected an object, got {type(record).__name__}")
        for name in ("pair_id", "annotator", "time"):
            if not isinstance(record.get(name), str):
                raise error(name, "missing or not a string")
        pair = self.pairs.get(record["pair_id"])
        if pair is None:
            raise error(
                "pair_id",
                f"{record['pair_id']!r} is not among the pairs being labelled "
                "(was this file written for other pairs? choose another --out)",
            )
        if preference:
            choice = record.get("choice")
            if isinstance(choice, bool) or choice not in (0, 1):
                raise error("choice", f"expected 0 or 1, got {choice!r}")
            shown = (record.get("candidate_0"), record.get("candidate_1"))
            if shown == (pair.candidate_0, pair.candidate_1):
                record["_swapped"] = False
            elif shown == (pair.candidate_1, pair.candidate_0):
                record["_swapped"] = True
            else:
                raise error("candidate_0", f"the texts differ from pair {pair.pair_id!r}'s")
        return record

    @staticmethod
    def _judgement_of(record: Mapping[str, Any]) -> Judgement:
        if "choice" not in record:
            verdict = "skip"
        elif record.get("tie") is True:
            verdict = "tie"
        else:
            verdict = "right" if record["choice"] == 1 else "left"
        swapped = record.get("_swapped", swapped_for(record["pair_id"], record["annotator"]))
        return Judgement(record["pair_id"], record["annotator"], verdict, swapped, record["time"])

    def _add(self, judgement: Judgement) -> None:
        self._judgements.append(judgement)
        self._by_annotator.setdefault(judgement.annotator, {})[judgement.pair_id] = judgement

    def _records_of(self, judgement: Judgement) -> list[dict[str, Any]]:
        pair = self.pairs[judgement.pair_id]
        if judgement.verdict == "skip":
            return [
                {"pair_id": pair.pair_id, "annotator": judgement.annotator, "time": judgement.time}
            ]
        left, right = (
            (pair.candidate_1, pair.candidate_0)
            if judgement.swapped
            else (pair.candidate_0, pair.candidate_1)
        )
        base = {"prompt": pair.prompt, "candidate_0": left, "candidate_1": right}
        tail = {"annotator": judgement.annotator, "time": judgement.time, "pair_id": pair.pair_id}
        if judgement.verdict == "tie":
            return [{**base, "choice": c, **tail, "tie": True} for c in (0, 1)]
        return [{**base, "choice": int(judgement.verdict == "right"), **tail}]

    # ----------------------------------------------------------------- choices
    def record(self, annotator: str, pair_id: str, verdict: str) -> Judgement:
        """Write ``annotator``'s ``verdict`` ("left", "right", "tie" or "skip", as shown to
        them) on ``pair_id`` to disk, then remember it."""
        if verdict not in VERDICTS:
            raise InvalidArgumentError(f"choice: expected one of {VERDICTS}, got {verdict!r}")
        with self._lock:
            if pair_id not in self.pairs:
                raise UnknownPairError(f"pair_id: unknown pair {pair_id!r}")
            if pair_id in self._by_annotator.get(annotator, {}):
                raise AlreadyJudgedError(
                    f"pair_id: {pair_id!r} was already judged by {annotator!r} "
                    "(undo it first to change the choice)"
                )
            # Strictly increasing times: they order the two files' records on a restart.
            moment = datetime.now(timezone.utc)
            if self._judgements and _iso(moment) <= self._judgements[-1].time:
                try:
                    last = datetime.fromisoformat(self._judgements[-1].time.replace("Z", "+00:00"))
                    moment = last + timedelta(microseconds=1)
                except ValueError:  # a hand-edited time; keep the clock's
                    pass
            judgement = Judgement(
                pair_id, annotator, verdict, swapped_for(pair_id, annotator), _iso(moment)
            )
            path = self.skips_path if verdict == "skip" else self.out
            text = "".join(
                json.dumps(r, ensure_ascii=False) + "\n" for r in self._records_of(judgement)
            )
            _append_durably(path, text)  # on disk before anyone is told it is saved
            self._add(judgement)
            if self._assigned.get(annotator) == pair_id:
                del self._assigned[annotator]
            return judgement

    def undo(self, annotator: str) -> Optional[Judgement]:
        """Remove ``annotator``'s last judgement from disk and memory; ``None`` when there is none.
        The pair becomes the one on their screen again."""
        with self._lock:
            mine = self._by_annotator.get(annotator, {})
            if not mine:
                return None
            last = next(j for j in reversed(self._judgements) if j.annotator == annotator)
            path = self.skips_path if last.verdict == "skip" else self.out
            key = (last.pair_id, last.annotator)

            def other(line: str) -> bool:
                if not line.strip():
                    return False
                record = json.loads(line)
                return (record.get("pair_id"), record.get("annotator")) != key

            _replace_durably(path, [line for line in _read_lines(path) if other(line)])
            del mine[last.pair_id]
            self._judgements.remove(last)
            self._assigned[annotator] = last.pair_id
            return last

    # --------------------------------------------------------------- assignment
    def next_pair(self, annotator: str) -> Optional[Pair]:
        """The pair to show ``annotator``: the one already on their screen, else the first
        pair they have not judged among those with the fewest judgements and screens (so each
        pair gets a first label before any gets a second). ``None`` when they are done."""
        with self._lock:
            mine = self._by_annotator.get(annotator, {})
            current = self._assigned.get(annotator)
            if current is not None and current not in mine:
                return self.pairs[current]
            load = dict.fromkeys(self.pairs, 0)
            for judgement in self._judgements:
                if judgement.verdict != "skip":
                    load[judgement.pair_id] += 1
            for other, pair_id in self._assigned.items():
                if other != annotator:
                    load[pair_id] += 1
            open_ids = [pair_id for pair_id in self.pairs if pair_id not in mine]
            if not open_ids:
                return None
            chosen = min(open_ids, key=lambda pair_id: (load[pair_id], self.order[pair_id]))
            self._assigned[annotator] = chosen
            return self.pairs[chosen]

    # ------------------------------------------------------------------ reading
    def judgements(self) -> list[Judgement]:
        """Every judgement so far, oldest first (a copy)."""
        with self._lock:
            return list(self._judgements)

    def count_of(self, annotator: str) -> int:
        """How many pairs ``annotator`` has judged or skipped."""
        with self._lock:
            return len(self._by_annotator.get(annotator, {}))
