"""The sustained flood's bounds are checked before any socket exists (no traffic is sent here)."""

from __future__ import annotations

import pytest

from cnitrace.traffic import flood


@pytest.mark.parametrize("kw", [dict(seconds=0), dict(seconds=flood.MAX_SUSTAIN_SECONDS + 1), dict(payload=0),
                                dict(payload=1473), dict(dport=0), dict(pps=-1)])
def test_sustain_refuses_unbounded_or_bad_input(kw):
    args = dict(dst="10.0.0.1", dport=9, seconds=1.0) | kw
    with pytest.raises(SystemExit):
        flood.sustain(**args)


def test_sustain_usage():
    with pytest.raises(SystemExit, match="usage: sustain"):
        flood.main(["sustain", "10.0.0.1"])
