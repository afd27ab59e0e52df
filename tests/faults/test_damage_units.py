"""The pieces the damaged-file rows rely on, one at a time (no kernel objects)."""

from __future__ import annotations

import json

import pytest

from cnitrace.calibrate import rules
from cnitrace.core import state as st
from cnitrace.core.errors import ToolError
from cnitrace.core.runner import RecordedRunner
from cnitrace.vagrant import microvm


@pytest.fixture
def sf(tmp_path, monkeypatch):
    monkeypatch.setenv("CNITRACE_STATE_DIR", str(tmp_path))
    monkeypatch.setattr(st, "_warned", set())
    removed: list[str] = []
    st.REMOVERS["test-kind"] = lambda rec, runner: removed.append(rec.name)
    yield st.StateFile(tmp_path)
    del st.REMOVERS["test-kind"]


def test_a_torn_line_does_not_swallow_the_next_record(sf, capsys):
    sf.record("run:1", "test-kind", "a")
    with open(sf.path, "a") as f:
        f.write('{"op": "add", "id": "zz", "own')          # cut by a crash: no newline
    assert [r.name for r in sf.live()] == ["a"]
    assert capsys.readouterr().err == ""                  # a torn last line is not worth a word
    sf.record("run:1", "test-kind", "b")
    assert [r.name for r in sf.live()] == ["a", "b"]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "1 unreadable line(s) ignored" in err


def test_malformed_records_are_skipped_with_one_line(sf, capsys):
    sf.record("run:1", "test-kind", "good")
    with open(sf.path, "a") as f:
        for e in ({"op": "add", "id": ["x"], "owner": "run:1", "kind": "test-kind", "name": "n", "data": {},
                   "created": 1}, {"op": "add", "id": "y", "owner": "run:1", "kind": "test-kind", "name": "n",
                                   "data": [], "created": 1}, {"op": "add", "id": "z", "owner": "run:1",
                                                               "kind": "test-kind", "name": "n", "data": {},
                                                               "created": "yesterday"}):
            f.write(json.dumps(e) + "\n")
    for _ in range(3):
        assert [r.name for r in sf.live()] == ["good"]
    err = capsys.readouterr().err
    assert err == f"cnitrace: warning: {sf.path}: 3 malformed record(s) ignored\n"
    assert [r.name for r in st.cleanup(sf, runner=RecordedRunner({})).removed] == ["good"]


def test_an_unwritable_state_directory_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    sf = st.StateFile(tmp_path / "file" / "state")
    with pytest.raises(ToolError, match="is not writable"):
        sf.check_writable()
    with pytest.raises(ToolError, match="is not writable"):
        sf.record("run:1", "netns", "cnit-x")


def test_check_writable_leaves_nothing(tmp_path):
    st.StateFile(tmp_path / "s").check_writable()
    assert list((tmp_path / "s").iterdir()) == []


def test_cleanup_survives_a_tombstone_it_cannot_write(sf, monkeypatch):
    sf.record("run:1", "test-kind", "a")

    def full(rec):
        raise ToolError("state directory is not writable (No space left on device)")

    monkeypatch.setattr(sf, "forget", full)
    res = st.cleanup(sf, runner=RecordedRunner({}))
    assert [r.name for r in res.removed] == ["a"] and not res.failed


@pytest.mark.parametrize("text", ["", "{", "[1]", '"x"', "\x00\xff garbage"])
def test_a_damaged_calibration_cache_reads_empty_with_one_line(tmp_path, capsys, text):
    cache = tmp_path / "calibration.json"
    cache.write_text(text)
    assert rules._read_entries(cache, warn=True) == {}
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "measuring again" in err


def test_a_missing_calibration_cache_is_silent(tmp_path, capsys):
    assert rules._read_entries(tmp_path / "calibration.json", warn=True) == {}
    assert capsys.readouterr().err == ""


def test_newc_complete():
    data = microvm.newc_archive([microvm.CpioEntry("init", 0o100755, b"#!/bin/sh\n" * 100)])
    assert microvm.newc_complete(data[:6], data[-1024:])
    assert not microvm.newc_complete(data[:6], data[: len(data) // 2][-1024:])
    assert not microvm.newc_complete(b"\x00" * 6, data[-1024:])
