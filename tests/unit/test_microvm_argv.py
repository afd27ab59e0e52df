"""Pure parts of the microVM runner: qemu argv, kernel choice, guest job, initramfs, console.

The job script and the cpio archive are checked with the real consumers where that needs
no root: /bin/sh runs the job (as the guest's `env -i /bin/sh job.sh` does) and GNU cpio
lists and extracts the archive.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from cnitrace.core.errors import UsageError
from cnitrace.core.runner import Runner
from cnitrace.vagrant import microvm as mv

FIXTURES = Path(__file__).parents[1] / "fixtures" / "microvm"
RUN = Runner()


# --- qemu argv and kernel command line ---------------------------------------------------------

def test_qemu_argv_is_the_verified_recipe():
    argv = mv.qemu_argv("/boot/vmlinuz-6.12.115+deb12-amd64", "/tmp/x/initrd.cpio")
    assert argv[0] == "qemu-system-x86_64"
    joined = " ".join(argv)
    assert "-accel tcg -cpu max -m 2048 -smp 2" in joined
    for flag in ("-nographic", "-no-reboot"):
        assert flag in argv
    assert argv[argv.index("-nic") + 1] == "none"
    assert argv[argv.index("-kernel") + 1] == "/boot/vmlinuz-6.12.115+deb12-amd64"
    assert argv[argv.index("-initrd") + 1] == "/tmp/x/initrd.cpio"
    assert argv[argv.index("-virtfs") + 1] == (
        "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap")
    assert argv[argv.index("-append") + 1] == mv.kernel_cmdline()
    assert "-enable-kvm" not in argv and "kvm" not in joined


def test_qemu_argv_sizes_and_cmdline_are_separate_argv_items():
    argv = mv.qemu_argv("k", "i", mem_mb=1024, smp=1, cmdline="console=ttyS0 x=1")
    assert argv[argv.index("-m") + 1] == "1024"
    assert argv[argv.index("-smp") + 1] == "1"
    assert argv[argv.index("-append") + 1] == "console=ttyS0 x=1"
    assert all(isinstance(a, str) for a in argv)


def test_kernel_cmdline_serial_console_and_panic_exits():
    words = mv.kernel_cmdline().split()
    assert "console=ttyS0" in words
    assert "panic=-1" in words          # with -no-reboot, a panic ends qemu instead of hanging
    assert "rdinit=/init" in words


# --- kernel choice ------------------------------------------------------------------------------

def test_version_key_orders_like_sort_v():
    kvers = ["6.1.0-9-amd64", "6.12.115+deb12-amd64", "6.1.0-28-amd64", "5.10.0-30-amd64"]
    assert sorted(kvers, key=mv.version_key) == [
        "5.10.0-30-amd64", "6.1.0-9-amd64", "6.1.0-28-amd64", "6.12.115+deb12-amd64"]


def test_choose_kernel_newest_usable():
    kvers = ["6.1.0-28-amd64", "6.12.115+deb12-amd64", "6.1.0-9-amd64"]
    assert mv.choose_kernel(kvers, lambda k: True) == "6.12.115+deb12-amd64"
    assert mv.choose_kernel(kvers, lambda k: k.startswith("6.1.")) == "6.1.0-28-amd64"
    assert mv.choose_kernel(kvers, lambda k: False) is None
    assert mv.choose_kernel([], lambda k: True) is None


def test_kernel_paths_require_image_modules_and_headers(tmp_path):
    paths = mv.KernelPaths(tmp_path / "boot", tmp_path / "modules", tmp_path / "src")
    for d in ("boot", "modules/6.12.1-amd64", "modules/6.13.0-amd64", "src/linux-headers-6.12.1-amd64"):
        (tmp_path / d).mkdir(parents=True)
    for k in ("6.12.1-amd64", "6.13.0-amd64"):
        (tmp_path / "boot" / f"vmlinuz-{k}").write_bytes(b"x")
        (tmp_path / "modules" / k / "modules.dep").write_text("")
    # 6.13 is newer but has no headers, so bcc could not compile kprobes in the guest.
    assert sorted(paths.installed()) == ["6.12.1-amd64", "6.13.0-amd64"]
    assert mv.resolve_kernel(None, paths) == "6.12.1-amd64"
    assert mv.resolve_kernel("6.12.1-amd64", paths) == "6.12.1-amd64"
    with pytest.raises(UsageError):
        mv.resolve_kernel("6.13.0-amd64", paths)
    with pytest.raises(UsageError):
        mv.resolve_kernel("../../etc", paths)


# --- modules ------------------------------------------------------------------------------------

def test_module_load_order_from_real_modules_dep():
    dep = (FIXTURES / "modules.dep-6.12.115-excerpt.txt").read_text()
    builtin = (FIXTURES / "modules.builtin-6.12.115-excerpt.txt").read_text()
    order = mv.module_load_order(dep, builtin, mv.GUEST_MODULES)
    assert order == ["kernel/fs/netfs/netfs.ko.xz", "kernel/net/9p/9pnet.ko.xz",
                     "kernel/net/9p/9pnet_virtio.ko.xz", "kernel/fs/9p/9p.ko.xz",
                     "kernel/fs/overlayfs/overlay.ko.xz"]
    # Built-ins (virtio_pci here) need no insmod; dependencies come first and only once.
    assert mv.module_load_order(dep, builtin, ["virtio_pci", "9p", "9pnet"]) == [
        "kernel/fs/netfs/netfs.ko.xz", "kernel/net/9p/9pnet.ko.xz", "kernel/fs/9p/9p.ko.xz"]


def test_module_load_order_unknown_module_is_an_error():
    dep = (FIXTURES / "modules.dep-6.12.115-excerpt.txt").read_text()
    with pytest.raises(mv.MicrovmError, match="no_such_mod"):
        mv.module_load_order(dep, "", ["no_such_mod"])


# --- environment and job script -----------------------------------------------------------------

def test_guest_env_keeps_only_relevant_names():
    env = mv.guest_env({"PATH": "/usr/bin", "HOME": "/root", "CI": "true", "CNITRACE_STRICT_TIERS": "1",
                        "LC_ALL": "C.UTF-8", "SSH_AUTH_SOCK": "/tmp/agent", "BASH_FUNC_f%%": "() { :; }",
                        "PYTEST_CURRENT_TEST": "x", "DISPLAY": ":0"})
    assert env == {"CI": "true", "CNITRACE_STRICT_TIERS": "1", "HOME": "/root", "LC_ALL": "C.UTF-8",
                   "PATH": "/usr/bin"}


HOSTILE = ["it's", "$(touch pwned)", "`touch pwned`", "a\nb", "; rm -rf /x", '"q"', "$HOME", "*", ""]


def _run_job(tmp_path: Path, argv, cwd, env):
    job = tmp_path / "job.sh"
    job.write_text(mv.job_script(argv, cwd, env))
    # The guest runs `env -i /bin/sh job.sh`: start from an empty environment the same way.
    return RUN.run(["/bin/sh", str(job)], env={}, check=False)


def test_job_script_recreates_cwd_env_and_argv_without_injection(tmp_path):
    work = tmp_path / "dir with space"
    work.mkdir()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNITRACE_A": HOSTILE[1], "CNITRACE_B": HOSTILE[3],
           "CNITRACE_C": HOSTILE[0]}
    probe = ("import json, os, sys; print(json.dumps({'argv': sys.argv[1:], 'cwd': os.getcwd(), "
             "'env': {k: v for k, v in os.environ.items() if k.startswith('CNITRACE')}}))")
    done = _run_job(tmp_path, [sys.executable, "-c", probe, *HOSTILE], str(work), env)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["argv"] == HOSTILE
    assert got["cwd"] == str(work)
    assert got["env"] == {"CNITRACE_A": HOSTILE[1], "CNITRACE_B": HOSTILE[3], "CNITRACE_C": HOSTILE[0],
                          "CNITRACE_MICROVM": "1"}
    assert not (work / "pwned").exists() and not (tmp_path / "pwned").exists()


def test_job_script_exit_status_and_missing_cwd(tmp_path):
    assert _run_job(tmp_path, ["sh", "-c", "exit 7"], str(tmp_path), {"PATH": "/usr/bin:/bin"}).returncode == 7
    done = _run_job(tmp_path, ["true"], str(tmp_path / "gone"), {"PATH": "/usr/bin:/bin"})
    assert done.returncode == mv.VM_ERROR_STATUS
    assert "cannot enter" in done.stderr and "gone" in done.stderr


def test_job_script_rejects_bad_input():
    with pytest.raises(UsageError):
        mv.job_script([], "/", {})
    with pytest.raises(UsageError):
        mv.job_script(["true"], "/", {"A B": "x"})


# --- initramfs ----------------------------------------------------------------------------------

def test_newc_archive_read_by_gnu_cpio(tmp_path):
    entries = [mv.CpioEntry("bin", 0o040755), mv.CpioEntry("bin/hello", 0o100755, b"#!/bin/sh\necho hi\n"),
               mv.CpioEntry("cnitrace", 0o040755), mv.CpioEntry("cnitrace/odd", 0o100644, b"abc"),
               mv.CpioEntry("dev", 0o040755), mv.CpioEntry("dev/console", 0o020600, rdev=(5, 1))]
    archive = tmp_path / "a.cpio"
    data = mv.newc_archive(entries)
    assert len(data) % 512 == 0
    archive.write_bytes(data)
    listing = RUN.run(["cpio", "-t", "-v", "-F", str(archive)]).stdout.splitlines()
    assert [line.split()[-1] for line in listing] == [e.name for e in entries]
    modes = {line.split()[-1]: line.split()[0] for line in listing}
    assert modes["bin/hello"] == "-rwxr-xr-x" and modes["dev/console"] == "crw-------"
    out = tmp_path / "x"
    out.mkdir()
    RUN.run(["cpio", "-i", "-d", "--no-absolute-filenames", "-F", str(archive), "-D", str(out),
             "bin/hello", "cnitrace/odd"])
    assert (out / "bin/hello").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert (out / "cnitrace/odd").read_bytes() == b"abc"


def test_job_archive_carries_job_and_nonce(tmp_path):
    archive = tmp_path / "job.cpio"
    archive.write_bytes(mv.job_archive(["true"], "/work", {"CI": "1"}, "00ff"))
    out = tmp_path / "x"
    out.mkdir()
    RUN.run(["cpio", "-i", "-d", "-F", str(archive), "-D", str(out)])
    assert (out / "cnitrace/nonce").read_text() == "00ff\n"
    assert (out / "cnitrace/job.sh").read_text() == mv.job_script(["true"], "/work", {"CI": "1"})


def test_elf_is_static_on_real_binaries():
    assert mv.elf_is_static(Path("/bin/busybox").read_bytes())      # busybox-static
    assert not mv.elf_is_static(Path(os.path.realpath("/bin/sh")).read_bytes())
    assert not mv.elf_is_static(b"#!/bin/sh\n")


def test_initramfs_cache_name_tracks_kernel_init_and_modules():
    a = mv.initramfs_cache_name("6.12.1-amd64", b"init v1", ["m.ko.xz"])
    assert a.startswith("initramfs-6.12.1-amd64-") and a.endswith(".cpio")
    assert a == mv.initramfs_cache_name("6.12.1-amd64", b"init v1", ["m.ko.xz"])
    assert a != mv.initramfs_cache_name("6.12.1-amd64", b"init v2", ["m.ko.xz"])
    assert a != mv.initramfs_cache_name("6.12.2-amd64", b"init v1", ["m.ko.xz"])
    assert a != mv.initramfs_cache_name("6.12.1-amd64", b"init v1", ["m.ko.xz", "n.ko.xz"])


# --- console demultiplexing -----------------------------------------------------------------------

NONCE = "5eed"
START = f"{mv.START_MARKER} {NONCE}\r\n"
EXIT = f"{mv.MARKER} {NONCE} 7\r\n"


def _feed(chunks):
    d = mv.ConsoleDemux(NONCE)
    out = "".join(d.feed(c) for c in chunks) + d.finish()
    return d, out


def test_demux_hides_boot_noise_and_reads_status():
    d, out = _feed(["\x1bc\x1b[?7lSeaBIOS (version 1.16)\r\n", START, "hello\r\nworld\r\n", EXIT,
                    "reboot: Power down\r\n"])
    assert out == "hello\nworld\n"
    assert d.status == 7 and d.started
    assert "SeaBIOS" in d.boot_log


@pytest.mark.parametrize("size", [1, 2, 3, 7, 50])
def test_demux_any_chunking_gives_the_same_result(size):
    text = "boot\r\n" + START + "dots...\r\nno newline" + EXIT + "after\r\n"
    d, out = _feed([text[i:i + size] for i in range(0, len(text), size)])
    assert out == "dots...\nno newline"
    assert d.status == 7


def test_demux_passes_partial_lines_through_immediately():
    d = mv.ConsoleDemux(NONCE)
    d.feed(START)
    assert d.feed("....") == "...."          # pytest progress dots are not held back
    assert d.feed("CNITRACE-MIC") == ""       # could be the marker: held
    assert d.feed("ROSCOPE\r\n") == "CNITRACE-MICROSCOPE\n"


def test_demux_ignores_a_marker_with_another_nonce():
    d, out = _feed([START, f"{mv.MARKER} beef 0\r\n", "x\r\n", EXIT])
    assert out == f"{mv.MARKER} beef 0\nx\n"
    assert d.status == 7


def test_demux_without_start_keeps_boot_log_for_the_error():
    d, out = _feed(["Kernel panic - not syncing: VFS\r\n", "end Kernel panic\r\n"])
    assert out == "" and not d.started and d.status is None
    assert "end Kernel panic" in d.boot_log


def test_demux_output_but_no_exit_marker():
    d, out = _feed([START, "partial out"])
    assert out == "partial out" and d.status is None


# --- command line (no boot) -----------------------------------------------------------------------

@pytest.mark.parametrize("args", [[], ["--"], ["--timeout", "soon", "--", "true"], ["--bogus", "--", "true"],
                                  ["--timeout", "0", "--", "true"], ["--smp", "0", "--", "true"]])
def test_main_bad_usage_is_one_line_and_status_2(args, capsys):
    assert mv.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("microvm: ") and err.count("\n") == 1


def test_boot_failure_picks_the_telling_line():
    lines = ["SeaBIOS (version 1.16)", "9pnet_virtio: no channels available for device x",
             "cnitrace-microvm: guest setup failed: mount 9p hostroot", "[    5.36] reboot: Power down"]
    assert mv.boot_failure(lines) == "cnitrace-microvm: guest setup failed: mount 9p hostroot"
    assert mv.boot_failure(["a", "Kernel panic - not syncing: x", "b"]) == "Kernel panic - not syncing: x"
    assert mv.boot_failure(["a", "b"]) == "b"
    assert mv.boot_failure([]) == "no console output"
