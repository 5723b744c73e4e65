"""The journal keeps every request across a crash and lets go of what the database has."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.metering.journal import Journal, JournalLockedError, open_journal, recovered_rows
from gateway.records import Outcome, UsageRecord


def record(request_id: str, started_at: float = 100.0, **fields: object) -> UsageRecord:
    return UsageRecord(request_id, "ten_a", "key_a", "m1", "chat.completions", started_at, **fields)  # type: ignore[arg-type]


def segments(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("segment-*"))


def test_a_crash_leaves_starts_and_unsaved_rows_to_recover(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    assert journal.open() == []
    journal.started(record("req_done", endpoint="http://e:1"))
    journal.finished(record("req_done", endpoint="http://e:1", prompt_tokens=3, completion_tokens=4))
    journal.started(record("req_cut", started_at=101.0, endpoint="http://e:2"))
    journal.progress("req_cut", 7, 20, 0.5)
    journal.progress("req_cut", 7, 25, 0.5)
    journal.started(record("req_committed", started_at=99.0))
    journal.finished(record("req_committed", started_at=99.0, completion_tokens=1))
    journal.committed([record("req_committed")])
    journal.close()  # as if killed: nothing else was written

    after = Journal(tmp_path)
    rows = recovered_rows(after.open(), now=200.0)
    by_id = {r.request_id: r for r in rows}
    assert [r.request_id for r in rows] == ["req_committed", "req_done", "req_cut"]  # by start time
    assert (by_id["req_done"].outcome, by_id["req_done"].completion_tokens) == (Outcome.ok, 4)
    cut = by_id["req_cut"]
    assert (cut.outcome, cut.prompt_tokens, cut.completion_tokens, cut.ttft_s) == (
        Outcome.interrupted,
        7,
        25,
        0.5,
    )
    assert (cut.endpoint, cut.ended_at, cut.http_status) == ("http://e:2", 200.0, 0)
    after.close()


def test_settled_segments_are_deleted_and_open_ones_kept(tmp_path: Path) -> None:
    journal = Journal(tmp_path, segment_bytes=1)  # every line rotates to a new segment
    journal.open()
    journal.started(record("a"))
    journal.started(record("b"))
    journal.finished(record("a"))
    journal.committed([record("a")])
    # "b" is still running: the segment that started it and everything after stays.
    remaining = segments(tmp_path)
    assert len(remaining) >= 2
    journal.finished(record("b"))
    journal.committed([record("b")])
    assert len(segments(tmp_path)) == 1  # only the current, empty one
    journal.close()
    again = Journal(tmp_path)
    assert recovered_rows(again.open(), now=1.0) == []
    again.close()


def test_uncommitted_rows_survive_until_the_database_has_them(tmp_path: Path) -> None:
    journal = Journal(tmp_path, segment_bytes=1)
    journal.open()
    journal.finished(record("x", prompt_tokens=5))
    journal.close()
    again = Journal(tmp_path)
    [row] = recovered_rows(again.open(), now=1.0)
    assert (row.request_id, row.prompt_tokens, row.outcome) == ("x", 5, Outcome.ok)
    # The caller journals the recovered rows again, then drops the old segments.
    again.finished(row)
    again.forget_leftovers()
    again.close()
    third = Journal(tmp_path)
    assert [r.request_id for r in recovered_rows(third.open(), now=1.0)] == ["x"]
    third.close()


def test_a_line_cut_short_by_a_crash_is_skipped(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.open()
    journal.finished(record("whole"))
    journal.close()
    [segment] = tmp_path.glob("segment-*")
    with segment.open("ab") as f:
        f.write(b'{"t":"F","r":{"request_id":"half')
    again = Journal(tmp_path)
    assert [r.request_id for r in recovered_rows(again.open(), now=1.0)] == ["whole"]
    again.close()


def test_one_process_per_journal_directory(tmp_path: Path) -> None:
    first = Journal(tmp_path)
    first.open()
    with pytest.raises(JournalLockedError):
        Journal(tmp_path).open()
    first.close()
    second = Journal(tmp_path)
    second.open()
    second.close()


def test_a_clean_shutdown_leaves_nothing_to_recover(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.open()
    journal.started(record("r"))
    journal.finished(record("r"))
    journal.committed([record("r")])
    journal.close()
    assert segments(tmp_path) == []
    again = Journal(tmp_path)
    assert again.open() == []
    again.close()


def crash(directory: Path, *request_ids: str) -> None:
    """A process that journaled ``request_ids`` finished in ``directory`` and was killed."""
    journal = Journal(directory)
    journal.open()
    for request_id in request_ids:
        journal.finished(record(request_id))
    journal.close()


def ids(entries: list[dict[str, object]]) -> list[str]:
    return [r.request_id for r in recovered_rows(entries, now=1.0)]


def test_each_worker_takes_its_own_directory_and_a_restarted_one_takes_it_back(tmp_path: Path) -> None:
    first, _ = open_journal(tmp_path, workers=2)
    second, _ = open_journal(tmp_path, workers=2)
    assert (first.directory, second.directory) == (tmp_path / "worker-0", tmp_path / "worker-1")
    first.finished(record("left-by-0"))
    first.close()  # killed with a row the database never got
    restarted, entries = open_journal(tmp_path, workers=2)
    assert restarted.directory == tmp_path / "worker-0" and ids(entries) == ["left-by-0"]
    restarted.close()
    second.close()


def test_a_rolling_restart_runs_a_worker_beyond_the_slots(tmp_path: Path) -> None:
    journals = [open_journal(tmp_path, workers=2)[0] for _ in range(4)]
    assert [j.directory.name for j in journals] == ["worker-0", "worker-1", "worker-2", "worker-3"]
    with pytest.raises(JournalLockedError, match="4 gateway processes hold the journal directories"):
        open_journal(tmp_path, workers=2)
    for journal in journals:
        journal.close()


def test_directories_no_worker_owns_are_recovered_once_under_their_lock(tmp_path: Path) -> None:
    crash(tmp_path, "single-process")  # the gateway ran as one process before
    crash(tmp_path / "worker-2", "from-three-workers")  # then as three; now two
    crash(tmp_path / "worker-1", "slot-1")  # a current slot: its next owner recovers it
    journal, entries = open_journal(tmp_path, workers=2)
    assert journal.directory == tmp_path / "worker-0"
    assert sorted(ids(entries)) == ["from-three-workers", "single-process"]
    # Until their rows are journaled again, the orphans stay locked: no one else recovers them.
    other, others = open_journal(tmp_path, workers=2)
    assert other.directory == tmp_path / "worker-1" and ids(others) == ["slot-1"]
    for row in recovered_rows(entries, now=1.0):
        journal.finished(row)
    journal.forget_leftovers()
    assert segments(tmp_path) == segments(tmp_path / "worker-2") == []
    third, nothing = open_journal(tmp_path, workers=3)
    assert third.directory == tmp_path / "worker-2" and nothing == []  # nothing is recovered twice
    for opened in (journal, other, third):
        opened.close()


def test_a_live_workers_directory_is_not_recovered_by_one_process(tmp_path: Path) -> None:
    worker, _ = open_journal(tmp_path, workers=3)
    worker.finished(record("in-flight"))  # not yet in the database, but its process is alive
    single, entries = open_journal(tmp_path, workers=1)
    assert single.directory == tmp_path and entries == []
    single.close()
    worker.close()
    single, entries = open_journal(tmp_path, workers=1)  # the worker is gone: its rows come back
    assert ids(entries) == ["in-flight"]
    single.close()
