"""`make bench`: run every tests/bench/bench_*.py module's main() and print its figures.

Benchmarks report ratios measured side by side in one run (the machine is shared and
noisy), and say for each figure what it measured. `python -m tests.bench NAME...` runs
only the named benchmarks.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time

import tests.bench as pkg
from cnitrace.node import checks


def main(argv: list[str]) -> int:
    checks.register_all()
    names = sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if m.name.startswith("bench_"))
    wanted = [n if n.startswith("bench_") else f"bench_{n}" for n in argv] or names
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        print(f"bench: unknown benchmark(s) {', '.join(unknown)}; have {', '.join(names)}", file=sys.stderr)
        return 2
    failed = 0
    for name in wanted:
        print(f"\n=== {name} ===", flush=True)
        t0 = time.monotonic()
        rc = importlib.import_module(f"tests.bench.{name}").main() or 0
        failed += rc != 0
        print(f"--- {name}: {'ok' if rc == 0 else 'TARGET MISSED'} in {time.monotonic() - t0:.1f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
