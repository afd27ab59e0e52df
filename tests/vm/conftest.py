"""vm-tier plumbing: these tests only make sense inside the microVM.

`make test` runs them with `python -m cnitrace.vagrant.microvm -- pytest tests/vm`, which
sets CNITRACE_MICROVM=1 in the guest. Anywhere else they skip with that instruction
(and under CNITRACE_STRICT_TIERS=1 a skip fails the run, as it should).
"""

from __future__ import annotations

import os

import pytest

from tests.vm.netlab import Namespaces

IN_VM = os.environ.get("CNITRACE_MICROVM") == "1"


@pytest.fixture(scope="session", autouse=True)
def _only_in_microvm():
    # Session scope: it must run before module-scoped fixtures that build namespaces.
    if not IN_VM:
        pytest.skip("vm tier: run through `python -m cnitrace.vagrant.microvm -- pytest tests/vm`")


@pytest.fixture
def namespaces():
    ns = Namespaces()
    yield ns
    ns.close()
