"""The local usage journal: what makes the ledger exactly-once across crashes and database outages.

Every metered request appends to an append-only file on local disk, before the database sees it:

- ``S`` when the request is admitted (before the engine is called),
- ``P`` now and then while a stream runs (the tokens known so far),
- ``F`` with the finished ledger row.

A write is one ``write(2)`` on an ``O_APPEND`` descriptor: the line survives the process being
killed (the kernel has it), at a few microseconds per request. ``fsync=True`` also survives a
power cut, at the disk's sync latency.

At the next start, ``recover`` reads what is left: each ``F`` row is inserted again (the ledger
ignores a request id it has), and each ``S`` without an ``F`` becomes an ``interrupted`` row with
its last known tokens. While the database is down, finished rows wait in the journal (and the
writer's queue) and are inserted in order when it returns. A segment file is deleted once every
request it started has finished and every row it holds is in the database.

Several worker processes of one gateway (``gateway serve --workers N``) each journal in a
directory of their own under one base (``open_journal``).
"""

from __future__ import annotations

import fcntl
import logging
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import orjson

from gateway.records import Outcome, UsageRecord

logger = logging.getLogger(__name__)

SEGMENT_BYTES = 16 * 1024 * 1024
_LOCK = ".lock"
WORKER_PREFIX = "worker-"


class JournalLockedError(RuntimeError):
    """Another gateway process holds this journal directory."""


class _Segment:
    def __init__(self, seq: int, path: Path, fd: int) -> None:
        self.seq, self.path, self.fd = seq, path, fd
        self.size = 0
        self.open_requests = 0  # started here, not finished yet
        self.uncommitted = 0  # finished rows written here, not yet in the database


class Journal:
    """One gateway process's journal: a directory of numbered segment files."""

    def __init__(self, directory: Path, fsync: bool = False, segment_bytes: int = SEGMENT_BYTES) -> None:
        self._dir = Path(directory)
        self._fsync = fsync
        self._segment_bytes = segment_bytes
        self._segments: dict[int, _Segment] = {}
        self._current: _Segment | None = None
        self._started_in: dict[str, int] = {}
        self._finished_in: dict[str, int] = {}
        self._lock_fd: int | None = None
        self._leftovers: list[Path] = []
        self._adopted_locks: list[int] = []  # other directories' locks, held until their rows are journaled

    @property
    def directory(self) -> Path:
        return self._dir

    # Lifecycle

    def open(self) -> list[dict[str, Any]]:
        """Lock the directory and return what the previous process left (see ``recovered_rows``)."""
        self._dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = _try_lock(self._dir)
        if self._lock_fd is None:
            raise JournalLockedError(
                f"{self._dir} is in use by another gateway process (several processes of one gateway: "
                "`gateway serve --workers N`, or GATEWAY_WORKERS=N in each, gives each its own directory)"
            )
        leftovers = sorted(self._dir.glob("segment-*.jsonl"))
        entries = [entry for path in leftovers for entry in _read_lines(path)]
        next_seq = max((_seq(p) for p in leftovers), default=0) + 1
        self._rotate(next_seq)
        # The caller journals the recovered rows again, then calls ``forget_leftovers``.
        self._leftovers = leftovers
        return entries

    def adopt(self, directory: Path) -> list[dict[str, Any]]:
        """What a process no longer running left in another journal ``directory``, to recover here
        like this one's own leftovers ([] when a live process holds it). Its lock is held, so no
        other process recovers the same rows, until ``forget_leftovers`` has deleted them."""
        lock = _try_lock(directory)
        if lock is None:
            return []
        segments = sorted(directory.glob("segment-*.jsonl"))
        if not segments:
            os.close(lock)
            return []
        self._adopted_locks.append(lock)
        self._leftovers += segments
        return [entry for path in segments for entry in _read_lines(path)]

    def forget_leftovers(self) -> None:
        """Delete the previous process's segments once their rows are journaled again."""
        for path in self._leftovers:
            path.unlink(missing_ok=True)
        self._leftovers = []
        self._release_adopted()

    def _release_adopted(self) -> None:
        for lock in self._adopted_locks:
            os.close(lock)
        self._adopted_locks = []

    def close(self) -> None:
        """Close the files; when everything is settled (a clean shutdown) nothing is left behind."""
        settled = all(not s.open_requests and not s.uncommitted for s in self._segments.values())
        for segment in self._segments.values():
            os.close(segment.fd)
            if settled:
                segment.path.unlink(missing_ok=True)
        self._segments.clear()
        self._current = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        self._release_adopted()

    # The request path

    def started(self, record: UsageRecord) -> None:
        segment = self._append({"t": "S", "r": _row(record)})
        segment.open_requests += 1
        self._started_in[record.request_id] = segment.seq
        self._rotate_if_full()

    def progress(
        self, request_id: str, prompt_tokens: int, completion_tokens: int, ttft_s: float | None
    ) -> None:
        if request_id in self._started_in:
            self._append(
                {"t": "P", "id": request_id, "p": prompt_tokens, "c": completion_tokens, "ttft": ttft_s}
            )

    def finished(self, record: UsageRecord) -> None:
        segment = self._append({"t": "F", "r": _row(record)})
        segment.uncommitted += 1
        self._finished_in[record.request_id] = segment.seq
        started = self._started_in.pop(record.request_id, None)
        if started is not None:
            self._segments[started].open_requests -= 1
        self._rotate_if_full()

    def committed(self, records: list[UsageRecord]) -> None:
        """These rows are in the database: their segments may go."""
        for record in records:
            seq = self._finished_in.pop(record.request_id, None)
            if seq is not None:
                self._segments[seq].uncommitted -= 1
        self._drop_settled()

    # Internals

    def _append(self, entry: dict[str, Any]) -> _Segment:
        segment = self._current
        assert segment is not None, "journal is not open"
        line = orjson.dumps(entry) + b"\n"
        os.write(segment.fd, line)
        if self._fsync:
            os.fsync(segment.fd)
        segment.size += len(line)
        return segment

    def _rotate_if_full(self) -> None:
        """After the caller has counted its line: a full segment gives way to a new one."""
        if self._current is not None and self._current.size >= self._segment_bytes:
            self._rotate(self._current.seq + 1)

    def _rotate(self, seq: int) -> None:
        path = self._dir / f"segment-{seq:012d}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._current = self._segments[seq] = _Segment(seq, path, fd)
        self._drop_settled()

    def _drop_settled(self) -> None:
        """Delete settled segments, oldest first, stopping at the first one still needed."""
        for seq in sorted(self._segments):
            segment = self._segments[seq]
            if segment is self._current or segment.open_requests or segment.uncommitted:
                return
            os.close(segment.fd)
            segment.path.unlink(missing_ok=True)
            del self._segments[seq]


def open_journal(base: Path, workers: int = 1, fsync: bool = False) -> tuple[Journal, list[dict[str, Any]]]:
    """The journal of one of ``workers`` processes sharing ``base``, open, and what it is to recover.

    One process journals in ``base`` itself. Each of several takes ``base/worker-<i>``, the lowest
    ``i`` no live process holds (a lock dies with its process): a restarted worker takes its
    predecessor's directory back and recovers what that one left. Each also recovers, under its
    lock, any other directory that no current worker's slot names: ``base`` after a move from one
    process to several, ``worker-<i>`` for ``i >= workers`` after their number shrank.
    """
    journal, entries = _take_slot(base, workers, fsync)
    slots = {base} if workers == 1 else {base / f"{WORKER_PREFIX}{i}" for i in range(workers)}
    try:
        for directory in [base, *sorted(base.glob(f"{WORKER_PREFIX}*"))]:
            if directory.is_dir() and directory not in slots and directory != journal.directory:
                entries += journal.adopt(directory)
    except BaseException:
        journal.close()
        raise
    return journal, entries


def _take_slot(base: Path, workers: int, fsync: bool) -> tuple[Journal, list[dict[str, Any]]]:
    if workers == 1:
        journal = Journal(base, fsync=fsync)
        return journal, journal.open()
    # Up to twice the slots: a rolling restart runs a new worker beside the one it replaces.
    for index in range(2 * workers):
        journal = Journal(base / f"{WORKER_PREFIX}{index}", fsync=fsync)
        try:
            return journal, journal.open()
        except JournalLockedError:
            continue
    raise JournalLockedError(f"{2 * workers} gateway processes hold the journal directories under {base}")


def _try_lock(directory: Path) -> int | None:
    """An exclusive lock on ``directory`` (its open descriptor), or None when a process holds it."""
    fd = os.open(directory / _LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def recovered_rows(entries: list[dict[str, Any]], now: float) -> list[UsageRecord]:
    """Finished rows as written, plus an ``interrupted`` row for every start without a finish."""
    finished: dict[str, UsageRecord] = {}
    started: dict[str, UsageRecord] = {}
    for entry in entries:
        kind = entry.get("t")
        if kind == "F":
            record = _record(entry["r"])
            finished[record.request_id] = record
        elif kind == "S":
            record = _record(entry["r"])
            started[record.request_id] = record
        elif kind == "P" and entry.get("id") in started:
            record = started[entry["id"]]
            record.prompt_tokens, record.completion_tokens = int(entry["p"]), int(entry["c"])
            record.ttft_s = entry.get("ttft")
    for request_id, record in started.items():
        if request_id not in finished:
            record.outcome, record.http_status, record.ended_at = Outcome.interrupted, 0, now
            record.error_code = "gateway_interrupted"
            finished[request_id] = record
    return sorted(finished.values(), key=lambda r: (r.started_at, r.request_id))


# Every column but ``extra``, read shallowly: ``dataclasses.asdict`` deep-copies and cost 12 µs a
# call, twice per request (measured with ``benchmarks/overhead.py``); this costs under 1 µs.
_ROW_FIELDS = tuple(f.name for f in fields(UsageRecord) if f.name != "extra")


def _row(record: UsageRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in _ROW_FIELDS}


def _record(row: dict[str, Any]) -> UsageRecord:
    fields = {k: v for k, v in row.items() if k in UsageRecord.__dataclass_fields__}
    fields["outcome"] = Outcome(fields.get("outcome", Outcome.ok))
    return UsageRecord(**fields)


def _seq(path: Path) -> int:
    return int(path.stem.split("-", 1)[1])


def _read_lines(path: Path) -> list[dict[str, Any]]:
    """Every complete line; a line cut short by a crash mid-write is skipped."""
    entries = []
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            logger.warning("%s:%d: skipping a damaged journal line", path, number)
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries
