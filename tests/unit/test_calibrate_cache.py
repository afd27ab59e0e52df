"""The calibration cache shared by concurrent runs (issue 16, item 3): two runs that start
together calibrate once, both read that one entry, entries under other keys survive, and a
reader never sees a torn file."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from cnitrace.calibrate.rules import cached

RUN = textwrap.dedent("""
    import dataclasses, json, pathlib, sys, time
    from cnitrace.calibrate.rules import cached

    @dataclasses.dataclass(frozen=True)
    class Cal:
        value: float
        provenance: str = "measured"
        def to_json(self):
            return {"value": self.value}

    cache, key, log = pathlib.Path(sys.argv[1]), sys.argv[2], pathlib.Path(sys.argv[3])
    def measure():
        with open(log, "a") as f:
            f.write(key + "\\n")
        time.sleep(0.4)                     # a calibration takes a while: the other run starts meanwhile
        return Cal(float(len(key)))
    got = cached(cache, key, lambda d: Cal(d["value"]), measure)
    print(json.dumps({"value": got.value, "provenance": got.provenance}))
""")


def _start(cache, key, log):
    return subprocess.Popen([sys.executable, "-c", RUN, str(cache), key, str(log)], stdout=subprocess.PIPE, text=True)


def test_two_runs_started_together_calibrate_once_and_agree(tmp_path):
    cache, log = tmp_path / "calibration.json", tmp_path / "measured.log"
    procs = [_start(cache, "k1", log) for _ in range(3)]
    outs = [json.loads(p.communicate(timeout=30)[0]) for p in procs]
    assert log.read_text().split() == ["k1"]                       # one calibration, not three
    assert sorted(o["provenance"] for o in outs) == ["cached", "cached", "measured"]
    assert len({o["value"] for o in outs}) == 1


def test_entries_of_other_keys_written_meanwhile_survive(tmp_path):
    cache, log = tmp_path / "calibration.json", tmp_path / "measured.log"
    procs = [_start(cache, k, log) for k in ("aa", "bbb")]
    for p in procs:
        p.communicate(timeout=30)
    assert set(json.loads(cache.read_text())) == {"aa", "bbb"}
    assert not list(tmp_path.glob(".*.tmp"))                        # no temporary file left behind


def test_a_torn_cache_is_measured_over(tmp_path):
    cache = tmp_path / "calibration.json"
    cache.write_text('{"k": {"value": 1')                          # cut by a crash mid-write

    class Cal:
        provenance = "measured"

        def to_json(self):
            return {"value": 2.0}

    got = cached(cache, "k", lambda d: d, lambda: Cal())
    assert got.provenance == "measured" and json.loads(cache.read_text()) == {"k": {"value": 2.0}}
