"""Rule-programming time of every registered lab datapath at N = 100, 1,000 and 10,000 rules.

Target (issue 3): 10,000 rules programmed in under 5 s, in bulk. "program" is the time the
datapath reports for loading its policy (iptables-restore / ipset restore / nft -f / OVS bundle /
BPF map batch); "build" adds the datapath's plumbing; "total" is the whole `lab up`. Each lab
is built with the same spec as `cnitrace lab up` and torn down with `lab down`. Datapaths that
accept an iptables backend are measured with both.
"""

from __future__ import annotations

import uuid

from cnitrace.core.errors import CnitraceError
from cnitrace.lab.datapaths import registry
from cnitrace.lab import manager
from cnitrace.lab.model import LabSpec

SIZES = (100, 1_000, 10_000)
TARGET_S = 5.0


def measure(dp: str, backend: str, n: int) -> dict[str, float]:
    name = f"cnitb{uuid.uuid4().hex[:6]}"
    lab = manager.up(LabSpec(name=name, datapath=dp, rules=n, backend=backend))
    try:
        return lab.timings
    finally:
        manager.down(name)


def main() -> int:
    missed = 0
    print(f"{'datapath':22} {'N':>6} {'program s':>10} {'build s':>9} {'total s':>9}  target <{TARGET_S:g} s at 10k")
    for dp in registry.names():
        for backend in registry.get(dp).backends or ("legacy",):
            label = dp if not registry.get(dp).backends else f"{dp}/{backend}"
            for n in SIZES:
                try:
                    t = measure(dp, backend, n)
                except CnitraceError as exc:
                    print(f"{label:22} {n:>6}  error: {exc.message}")
                    missed += 1
                    continue
                prog = t.get("program", t.get("build", float("nan")))
                ok = n != 10_000 or prog < TARGET_S
                missed += not ok
                print(f"{label:22} {n:>6} {prog:>10.3f} {t.get('build', 0):>9.3f} {t.get('total', 0):>9.3f}"
                      f"  {'' if ok else 'MISSED'}", flush=True)
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
