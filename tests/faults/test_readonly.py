"""An unwritable state directory (a read-only tmpfs, a full one): `lab up` and `profile` refuse with
one line before creating anything, since nothing they created could be recorded.

The tmpfs is mounted in the host's mount namespace under a cnit-named directory in /tmp (so the
node's picture sees anything the commands might create) and unmounted in a finally.
"""

from __future__ import annotations

import contextlib
import errno
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.faults.matrix import RULES, Private, one_line, picture, row, wait_clean

pytestmark = pytest.mark.requires("iptables")


@contextlib.contextmanager
def tmpfs(size: str = "64k"):
    """A private state directory on its own small tmpfs; remounted read-write, force-cleaned and
    unmounted afterwards, whatever happened."""
    p = Private.make()
    p.state.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "cnit-fault", str(p.state)], check=True)
    try:
        yield p
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(p.state)], capture_output=True)
        (p.state / "cnit-filler").unlink(missing_ok=True)
        p.cli("cleanup", "--force")
        subprocess.run(["umount", "-l", str(p.state)], capture_output=True)
        p.close()


def fill(directory: Path) -> None:
    """Write until the filesystem is full."""
    with open(directory / "cnit-filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc


def refuses(p, *args: str) -> str:
    r = p.cli(*args)
    assert r.returncode != 0 and one_line(r.stderr), r.stderr
    assert "state directory" in r.stderr and "not writable" in r.stderr, r.stderr
    return r.stderr.strip()


@pytest.mark.parametrize("how", ["read-only", "full"])
def test_lab_up_and_profile_refuse(how):
    lab = f"fr{uuid.uuid4().hex[:6]}"
    with tmpfs() as p:
        # a lab to profile, built while the directory still took writes
        up = p.cli("lab", "up", "-d", "calico", "-n", RULES, "--name", lab)
        assert up.returncode == 0, up.stderr
        if how == "read-only":
            subprocess.run(["mount", "-o", "remount,ro", str(p.state)], check=True)
        else:
            fill(p.state)
        before = picture(p)
        for command, argv in (("lab up", ("lab", "up", "-d", "calico", "-n", RULES, "--name", f"{lab}b")),
                              ("profile", ("profile", "--lab", lab, "--traffic", "probe", "--duration", "1"))):
            with row("readonly", command, how) as out:
                out.note = refuses(p, *argv)
                out.residue, out.foreign = wait_clean(before, {f"cnit-{lab}"}, p)
                assert not out.residue, out.explain()
        if how == "read-only":
            subprocess.run(["mount", "-o", "remount,rw", str(p.state)], check=True)
        else:
            (p.state / "cnit-filler").unlink()
        down = p.cli("lab", "down", "--name", lab)
        assert down.returncode == 0, down.stderr
