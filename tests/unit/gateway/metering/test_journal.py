"""The journal keeps every request across a crash and lets go of what the database has."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.metering.journal import Journal, JournalLockedError, recovered_rows
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
