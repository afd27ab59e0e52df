"""`cnitrace doctor` inside the guest finds the attach types the host lacks.

The same capability checks drive doctor, the probe ladder and the test skips; here they
must report kprobes and fentry usable, since the Debian kernel has both (the host has neither),
and BPF netfilter programs (nf_bpf, the brackets' attach type; Linux >= 6.4) ok as well.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cnitrace.core.runner import DEFAULT_RUNNER


def test_doctor_reports_kprobes_fentry_and_nf_bpf_ok():
    cnitrace = Path(sys.executable).with_name("cnitrace")
    done = DEFAULT_RUNNER.run([str(cnitrace), "doctor", "--json"], timeout=600)
    report = json.loads(done.stdout)
    checks = report["checks"]
    assert checks["kernel"]["detail"]["release"].endswith("-amd64")
    assert checks["kprobes"]["status"] == "ok", checks["kprobes"]
    assert checks["fentry"]["status"] == "ok", checks["fentry"]
    assert checks["nf_bpf"]["status"] == "ok", checks["nf_bpf"]
    assert report["can_profile"] is True
