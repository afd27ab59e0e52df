"""The microVM runner boots the Debian kernel and hands back the command's result.

Each boot costs seconds under TCG, so there are three: a full round trip (status, cwd,
environment, argv quoting, guest kernel), `true` (which is also the boot-time figure),
and a timeout that must kill qemu. Everything else is in tests/unit/test_microvm_argv.py.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from cnitrace.core.runner import Runner
from cnitrace.vagrant import microvm as mv

REPO = Path(__file__).resolve().parents[2]
RUN = Runner()
TRICKY = "it's $(touch /pwned) `id` \"q\"; *"


def _microvm(*args: str, cwd: Path = REPO, env: dict | None = None, timeout: float = 300):
    # `env -C` sets the caller's cwd: the Runner has no cwd option, and cwd is what we test.
    argv = ["env", "-C", str(cwd), sys.executable, "-m", "cnitrace.vagrant.microvm", *args]
    return RUN.run(argv, env={**os.environ, **(env or {})}, timeout=timeout, check=False)


def _qemu_pids() -> set[int]:
    pids = set()
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if (p / "comm").read_text().strip() == "qemu-system-x86":
                    pids.add(int(p.name))
            except OSError:
                continue
    return pids


def test_status_cwd_env_argv_and_guest_kernel():
    script = ('echo "cwd=$(pwd)"; printf "env=[%s]\\n" "$CNITRACE_MVTEST"; printf "arg=[%s]\\n" "$@"; '
              'echo "kernel=$(uname -r)"; echo "inside=$CNITRACE_MICROVM"; '
              'test -e /sys/kernel/tracing/trace && echo tracefs=yes; test -e /pwned && echo PWNED; exit 7')
    cwd = REPO / "tests" / "unit"
    done = _microvm("--timeout", "300", "--", "sh", "-c", script, "sh", "two words", TRICKY,
                    cwd=cwd, env={"CNITRACE_MVTEST": TRICKY})
    assert done.returncode == 7, done.stderr
    lines = done.stdout.splitlines()
    assert f"cwd={cwd}" in lines
    assert f"env=[{TRICKY}]" in lines
    assert lines[lines.index("arg=[two words]") + 1] == f"arg=[{TRICKY}]"
    assert f"kernel={mv.resolve_kernel(None)}" in lines      # the Debian kernel, not the host's
    assert mv.resolve_kernel(None) != os.uname().release
    assert "inside=1" in lines and "tracefs=yes" in lines
    assert mv.START_MARKER not in done.stdout and mv.MARKER not in done.stdout
    assert "SeaBIOS" not in done.stdout                       # boot noise is not the command's output
    assert "PWNED" not in done.stdout                         # quoting held: nothing ran in the guest


def test_true_exits_zero_and_leaves_nothing_behind():
    before, tmp_before = _qemu_pids(), set(Path("/tmp").glob("cnit-microvm-*"))
    t0 = time.monotonic()
    done = _microvm("--timeout", "300", "--", "true")
    elapsed = time.monotonic() - t0
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""
    assert _qemu_pids() <= before
    assert set(Path("/tmp").glob("cnit-microvm-*")) <= tmp_before      # the per-run initrd is gone
    print(f"microvm boot + true + poweroff: {elapsed:.1f} s")


def test_timeout_kills_the_vm_with_one_line_and_status_124():
    before = _qemu_pids()
    t0 = time.monotonic()
    done = _microvm("--timeout", "3", "--", "sleep", "600")
    assert time.monotonic() - t0 < 30
    assert done.returncode == mv.TIMEOUT_STATUS
    assert done.stderr == "microvm: timed out after 3 s; the VM was killed\n"
    assert _qemu_pids() <= before


def test_base_initramfs_is_built_once_per_init_and_kernel(tmp_path):
    """No boot: the cached image holds /init, static busybox and the decompressed modules."""
    kver = mv.resolve_kernel(None)
    (tmp_path / f"initramfs-{kver}-0000000000000000.cpio").write_bytes(b"stale")
    image = mv.base_initramfs(kver, cache_dir=tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [image.name]      # the stale image was pruned
    listing = RUN.run(["cpio", "-t", "-F", str(image)]).stdout.split()
    mods = [f"lib/modules/{m}.ko" for m in mv.GUEST_MODULES]
    assert {"init", "bin/busybox", "dev/console", "cnitrace/modules", *mods} <= set(listing)
    out = tmp_path / "x"
    out.mkdir()
    RUN.run(["cpio", "-i", "-d", "-F", str(image), "-D", str(out), "init", "cnitrace/modules", *mods])
    assert (out / "init").read_bytes() == (REPO / "vagrant" / "init.sh").read_bytes()
    assert (out / "cnitrace/modules").read_text().split() == [f"{m}.ko" for m in mv.GUEST_MODULES]
    for m in mods:
        assert (out / m).read_bytes()[:4] == b"\x7fELF"                # xz-decompressed for insmod
    mtime = image.stat().st_mtime_ns
    assert mv.base_initramfs(kver, cache_dir=tmp_path) == image and image.stat().st_mtime_ns == mtime
