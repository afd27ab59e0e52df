"""Snapshot + parse of 10,000 iptables rules vs python-iptables reading the same rules, side by side.

Targets (DESIGN.md): the `iptables-legacy-save -c` snapshot path parses 10,000 rules in < 0.3 s
(median) and is >= 10x faster than python-iptables (best against best, measured in interleaved
rounds so both sides see the same load on the shared machine). Rules live in a throwaway `cnit-` namespace that is
recorded in the state file before it is created; python-iptables follows the process's netns,
so its half runs in a child started with `ip netns exec` and times only its own reading loop.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import uuid

from cnitrace.collectors.iptables.source import IptablesCollector, ruleset_of
from cnitrace.core.runner import DEFAULT_RUNNER
from cnitrace.core.session import Session

RULES, CHAINS, REPEATS, ROUNDS = 10_000, 10, 3, 3
TARGET_S, TARGET_RATIO = 0.3, 10.0

IPTC_READER = """
import json, sys, time
import iptc
t0 = time.perf_counter()
table = iptc.Table(iptc.Table.FILTER)
table.refresh()
n = 0
packets = 0
for chain in table.chains:
    for rule in chain.rules:
        p, b = rule.get_counters()
        packets += p
        rule.target.name
        n += 1
print(json.dumps({"rules": n, "seconds": time.perf_counter() - t0}))
"""


def ruleset(rules: int, chains: int) -> str:
    per = (rules - chains) // chains  # plus one jump per chain from INPUT: `rules` in total
    lines = ["*filter", ":INPUT ACCEPT [0:0]"]
    lines += [f":cnit-b{c} - [0:0]" for c in range(chains)]
    lines += [f'-A INPUT -p tcp -m comment --comment "cnit:{c}" -j cnit-b{c}' for c in range(chains)]
    for c in range(chains):
        lines += [f"-A cnit-b{c} -s 10.{c}.{i // 250}.{i % 250 + 1}/32 -p tcp -m tcp --dport {1000 + i} -j DROP"
                  for i in range(per)]
    lines.append("COMMIT\n")
    return "\n".join(lines)


def main() -> int:
    ns = f"cnit-bench{uuid.uuid4().hex[:6]}"
    with Session() as session:
        session.track("netns", ns)
        DEFAULT_RUNNER.run(["ip", "netns", "add", ns])
        DEFAULT_RUNNER.run(["iptables-legacy-restore"], input=ruleset(RULES, CHAINS), netns=ns, timeout=120)

        col = IptablesCollector(netns=ns, backends=["legacy"], families=["ipv4"])
        times: list[float] = []
        iptc_times: list[float] = []
        n_rules = iptc_rules = 0
        for _ in range(ROUNDS):   # interleaved, so both sides see the same load on a shared machine
            for _ in range(REPEATS):
                t0 = time.perf_counter()
                snap = col.snapshot()
                times.append(time.perf_counter() - t0)
                n_rules = len(ruleset_of(snap).rules)
            out = DEFAULT_RUNNER.run([sys.executable, "-c", IPTC_READER], netns=ns, timeout=300).stdout
            res = json.loads(out.strip().splitlines()[-1])
            iptc_times.append(res["seconds"])
            iptc_rules = res["rules"]
        ours = statistics.median(times)
        theirs = min(iptc_times)
        full = IptablesCollector(netns=ns)  # all four tools, as `cnitrace snapshot` runs them
        t0 = time.perf_counter()
        full.snapshot()
        full_s = time.perf_counter() - t0

        # Informative: the same rules on the nft backend (python-iptables cannot read these at all).
        ns_nft = f"{ns}n"
        session.track("netns", ns_nft)
        DEFAULT_RUNNER.run(["ip", "netns", "add", ns_nft])
        DEFAULT_RUNNER.run(["iptables-nft-restore"], input=ruleset(RULES, CHAINS), netns=ns_nft, timeout=300)
        col_nft = IptablesCollector(netns=ns_nft, backends=["nft"], families=["ipv4"])
        nft_times = []
        for _ in range(3):
            t0 = time.perf_counter()
            n_nft = len(ruleset_of(col_nft.snapshot()).rules)
            nft_times.append(time.perf_counter() - t0)


    ratio = theirs / min(times)   # best against best: both measured in the same rounds
    print(f"rules in netns filter table: {n_rules} parsed by cnitrace, {iptc_rules} read by python-iptables")
    print(f"cnitrace snapshot+parse (iptables-legacy-save -c, median of {len(times)}): {ours * 1000:.1f} ms "
          f"(target < {TARGET_S * 1000:.0f} ms); best {min(times) * 1000:.1f} ms")
    print(f"cnitrace full snapshot (4 tools: legacy+nft, v4+v6): {full_s * 1000:.1f} ms")
    print(f"nft backend (iptables-nft-save -c, {n_nft} rules, median of 3): "
          f"{statistics.median(nft_times) * 1000:.1f} ms (informative; python-iptables cannot read it)")
    print(f"python-iptables reading loop (best of {ROUNDS}, excludes its import): {theirs * 1000:.1f} ms")
    print(f"ratio python-iptables / cnitrace, best vs best: {ratio:.1f}x (target >= {TARGET_RATIO:.0f}x)")
    ok = n_rules == iptc_rules == RULES and ours < TARGET_S and ratio >= TARGET_RATIO
    if n_rules != iptc_rules:
        print(f"MISMATCH: rule counts differ ({n_rules} vs {iptc_rules})")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
