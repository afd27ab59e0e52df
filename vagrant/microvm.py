"""Run one command inside a throwaway microVM that boots a stock Debian kernel.

Why: the CI host's kernel has no kprobes, no fentry and no OVS module, so the `vm` test
tier runs under `qemu-system-x86_64 -accel tcg` (KVM fails on nested CPU features here)
with the host's `/` shared read-only over 9p and a tmpfs overlay on top. The guest runs
the command in the caller's cwd with the caller's relevant environment and this process
exits with the command's exit status, carried back by a marker line on the serial console.

    python -m cnitrace.vagrant.microvm [--timeout S] [--kernel KVER] [--mem MB] [--smp N] -- CMD [ARGS...]

Exit status: CMD's own; 124 when --timeout expired (qemu is killed); 125 when the VM
could not be built or booted; 2 on bad usage; 130 on Ctrl-C.
Cost (measured on the 2-core CI host while other jobs ran): boot + `true` + poweroff 6-11 s;
the command runs 10-50x slower than on the host (TCG, Python imports over 9p): compiling a
small bcc kprobe program takes ~20 s in the guest, the whole vm test tier ~4-5 min.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import ctypes
import dataclasses
import gzip
import hashlib
import importlib.resources
import lzma
import os
import re
import secrets
import selectors
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence, TextIO

from cnitrace.core.errors import CnitraceError, ExitStatus, ToolError, UsageError
from cnitrace.core.runner import Runner
from cnitrace.core.session import Session

START_MARKER = "CNITRACE-MICROVM-START"
MARKER = "CNITRACE-MICROVM-EXIT"
QEMU = "qemu-system-x86_64"
# Loaded by /init in this order after dependency expansion; everything else the guest
# needs (virtio-pci, serial, tmpfs, bpf) is built into Debian's kernel.
GUEST_MODULES = ("netfs", "9pnet", "9pnet_virtio", "9p", "overlay")
# Bump when the initramfs layout changes so cached images are rebuilt.
INITRAMFS_FORMAT = "1"
CACHE_DIR = Path(os.environ.get("CNITRACE_CACHE_DIR", "/var/cache/cnitrace")) / "microvm"
TIMEOUT_STATUS = 124
VM_ERROR_STATUS = 125

ENV_NAMES = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TERM",
    "CI", "NO_COLOR", "FORCE_COLOR", "VIRTUAL_ENV",
    "PYTHONPATH", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "PYTHONHASHSEED", "PYTHONWARNINGS",
    "PYTEST_ADDOPTS", "PYTEST_PLUGINS",
})
ENV_PREFIXES = ("CNITRACE_", "LC_")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class MicrovmError(CnitraceError):
    """The VM could not be built, booted, or did not report the command's status."""

    exit_status = VM_ERROR_STATUS


class MicrovmTimeout(MicrovmError):
    exit_status = TIMEOUT_STATUS


# --- pure: kernel choice, command lines, guest job ---------------------------------------------

def version_key(kver: str) -> tuple:
    """Sort key like `sort -V`: numeric runs compare as numbers."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.findall(r"\d+|[^\d]+", kver))


def choose_kernel(candidates: Iterable[str], usable: Callable[[str], bool]) -> str | None:
    """The newest candidate version the guest can use (modules and headers present)."""
    for kver in sorted(set(candidates), key=version_key, reverse=True):
        if usable(kver):
            return kver
    return None


def kernel_cmdline() -> str:
    """Serial console only; `panic=-1` + qemu's -no-reboot turn a guest panic into a qemu exit."""
    return "console=ttyS0 quiet panic=-1 mitigations=off rdinit=/init"


def qemu_argv(kernel_image: str | os.PathLike, initrd: str | os.PathLike, *, mem_mb: int = 2048,
              smp: int = 2, cmdline: str | None = None, qemu: str = QEMU) -> list[str]:
    """The verified recipe (DESIGN.md): TCG, no NIC, host / read-only over virtio-9p."""
    return [
        qemu, "-accel", "tcg", "-cpu", "max", "-m", str(mem_mb), "-smp", str(smp),
        "-nographic", "-no-reboot", "-nic", "none",
        "-kernel", str(kernel_image), "-initrd", str(initrd),
        "-append", cmdline if cmdline is not None else kernel_cmdline(),
        "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
    ]


def guest_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The part of the caller's environment that should follow it into the guest."""
    return {k: v for k, v in sorted(environ.items())
            if _ENV_NAME_RE.match(k) and "\0" not in v
            and (k in ENV_NAMES or k.startswith(ENV_PREFIXES))}


def job_script(argv: Sequence[str], cwd: str, env: Mapping[str, str]) -> str:
    """A POSIX sh script that recreates cwd + env and execs argv; every value shlex-quoted."""
    if not argv:
        raise UsageError("no command given")
    lines = ["# written by cnitrace.vagrant.microvm", "umask 022"]
    for k, v in env.items():
        if not _ENV_NAME_RE.match(k):
            raise UsageError(f"invalid environment variable name {k!r}")
        lines.append(f"export {k}={shlex.quote(v)}")
    lines.append("export CNITRACE_MICROVM=1")
    q = shlex.quote(cwd)
    lines.append(f"cd -- {q} || {{ echo \"cnitrace-microvm: cannot enter \"{q}\" in the guest\" >&2; "
                 f"exit {VM_ERROR_STATUS}; }}")
    lines.append(f"exec {shlex.join(argv)}")
    return "\n".join(lines) + "\n"


def module_load_order(modules_dep: str, builtin: str, names: Sequence[str]) -> list[str]:
    """Relative module paths to insmod for `names`, dependencies first, built-ins skipped.

    `modules_dep` and `builtin` are the texts of /lib/modules/KVER/modules.dep and
    modules.builtin. Raises MicrovmError when a module is neither built in nor a module.
    """
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in modules_dep.splitlines():
        if ":" not in line or line.startswith("#"):
            continue
        path, _, rest = line.partition(":")
        path = path.strip()
        deps[path] = rest.split()
        by_name[_module_name(path)] = path
    builtins = {_module_name(line.strip()) for line in builtin.splitlines()
                if line.strip() and not line.startswith("#")}
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        for dep in deps.get(path, []):
            visit(dep)
        order.append(path)

    for name in names:
        key = name.replace("-", "_")
        if key in by_name:
            visit(by_name[key])
        elif key not in builtins:
            raise MicrovmError(f"kernel module {name} is neither built in nor in modules.dep")
    return order


def _module_name(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    return base.split(".ko", 1)[0].replace("-", "_")


@dataclasses.dataclass(frozen=True)
class CpioEntry:
    name: str                 # path inside the archive, no leading slash
    mode: int                 # full st_mode (type bits included)
    data: bytes = b""         # file content, or the target of a symlink
    rdev: tuple[int, int] = (0, 0)


def newc_archive(entries: Sequence[CpioEntry]) -> bytes:
    """An uncompressed `cpio -H newc` archive, the format the kernel unpacks as initramfs."""
    out = bytearray()

    def pad() -> None:
        out.extend(b"\0" * (-len(out) % 4))

    for ino, e in enumerate([*entries, CpioEntry("TRAILER!!!", 0)], start=1):
        name = e.name.lstrip("/").encode() + b"\0"
        fields = (ino if e.name != "TRAILER!!!" else 0, e.mode, 0, 0,
                  2 if (e.mode & 0o170000) == 0o040000 else 1, 0, len(e.data), 0, 0,
                  e.rdev[0], e.rdev[1], len(name), 0)
        out.extend(b"070701" + "".join(f"{f:08x}" for f in fields).encode())
        out.extend(name)
        pad()
        out.extend(e.data)
        pad()
    out.extend(b"\0" * (-len(out) % 512))
    return bytes(out)


def elf_is_static(data: bytes) -> bool:
    """True for a 64-bit ELF with no PT_INTERP segment (it runs with no libc in the initramfs)."""
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return False
    order = "little" if data[5] == 1 else "big"
    phoff = int.from_bytes(data[32:40], order)
    phentsize = int.from_bytes(data[54:56], order)
    phnum = int.from_bytes(data[56:58], order)
    for i in range(phnum):
        off = phoff + i * phentsize
        if int.from_bytes(data[off:off + 4], order) == 3:  # PT_INTERP
            return False
    return True


def newc_complete(head: bytes, tail: bytes) -> bool:
    """Whether an archive's first and last bytes are those of a whole `newc_archive`: the newc
    magic, and the TRAILER!!! entry followed only by padding (a truncated copy has neither)."""
    return head.startswith(b"070701") and tail.rstrip(b"\0").endswith(b"TRAILER!!!")


def initramfs_cache_name(kver: str, init_sh: bytes, module_paths: Sequence[str]) -> str:
    """Cache key: kernel version + hash of /init and of what goes next to it."""
    h = hashlib.sha256(INITRAMFS_FORMAT.encode() + b"\0" + init_sh + b"\0" + "\n".join(module_paths).encode())
    return f"initramfs-{kver}-{h.hexdigest()[:16]}.cpio"


class ConsoleDemux:
    """Splits the guest console into boot noise, the command's output and its exit status.

    Everything before the start marker (firmware escape codes, kernel messages) is kept
    aside, to be shown only if the guest fails to start the command. After it, text is
    passed through as soon as it arrives (pytest's progress dots have no newline), except a
    tail that might be the start of the exit marker, held until decided. Everything after
    the exit marker is the guest powering off and is dropped.
    """

    BOOT_LOG_LIMIT = 65536

    def __init__(self, nonce: str):
        self.head = f"{MARKER} {nonce} "
        self._start_re = re.compile(re.escape(f"{START_MARKER} {nonce}") + r"\r?\n")
        self._exit_re = re.compile(re.escape(self.head) + r"(\d{1,3})\r?\n")
        self._buf = ""
        self.boot_log = ""
        self.started = False
        self.status: int | None = None

    def feed(self, text: str) -> str:
        if self.status is not None:
            return ""
        self._buf += text
        if not self.started:
            m = self._start_re.search(self._buf)
            if not m:
                self._buf = self._buf[-self.BOOT_LOG_LIMIT:]
                return ""
            self.started = True
            self.boot_log, self._buf = self._buf[:m.start()], self._buf[m.end():]
        m = self._exit_re.search(self._buf)
        if m:
            self.status = int(m.group(1))
            out, self._buf = self._buf[:m.start()], ""
            return out.replace("\r\n", "\n")
        keep = self._holdback(self._buf)
        out, self._buf = self._buf[:len(self._buf) - keep], self._buf[len(self._buf) - keep:]
        return out.replace("\r\n", "\n")

    def finish(self) -> str:
        """At EOF: the command's output still held back (or, before the start, the boot log)."""
        if not self.started:
            self.boot_log, self._buf = self._buf, ""
            return ""
        out, self._buf = ("" if self.status is not None else self._buf), ""
        return out.replace("\r\n", "\n")

    def _holdback(self, buf: str) -> int:
        """Length of the longest suffix that could still grow into the marker (or a CRLF)."""
        start = max(0, len(buf) - len(self.head) - 5)
        for i in range(start, len(buf)):
            tail = buf[i:]
            if self.head.startswith(tail):
                return len(tail)
            if tail.startswith(self.head) and re.fullmatch(r"\d{0,3}\r?", tail[len(self.head):]):
                return len(tail)
        return 1 if buf.endswith("\r") else 0


_ANSI = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|.)")


def boot_failure(lines: Sequence[str]) -> str:
    """The most telling console line of a failed boot: our /init's error, a panic, else the last."""
    for needle in ("cnitrace-microvm:", "Kernel panic", "qemu-system"):
        hits = [line for line in lines if needle in line]
        if hits:
            return hits[-1]
    return lines[-1] if lines else "no console output"


# --- I/O: kernel discovery, initramfs, running qemu ------------------------------------------

@dataclasses.dataclass(frozen=True)
class KernelPaths:
    boot: Path = Path("/boot")
    modules: Path = Path("/lib/modules")
    src: Path = Path("/usr/src")

    def usable(self, kver: str) -> bool:
        return ((self.boot / f"vmlinuz-{kver}").is_file()
                and (self.modules / kver / "modules.dep").is_file()
                and (self.src / f"linux-headers-{kver}").is_dir())

    def installed(self) -> list[str]:
        return [p.name[len("vmlinuz-"):] for p in self.boot.glob("vmlinuz-*-amd64")]


def resolve_kernel(requested: str | None, paths: KernelPaths = KernelPaths()) -> str:
    if requested:
        if not re.fullmatch(r"[A-Za-z0-9._+-]+", requested) or not paths.usable(requested):
            raise UsageError(f"kernel {requested!r}: needs {paths.boot}/vmlinuz-KVER, "
                             f"{paths.modules}/KVER/modules.dep and {paths.src}/linux-headers-KVER")
        return requested
    kver = choose_kernel(paths.installed(), paths.usable)
    if kver is None:
        raise MicrovmError("no Debian kernel with modules and headers under /boot "
                           "(run `make provision` to install one)")
    return kver


def _read_module(path: Path) -> bytes:
    raw = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(raw)
    if path.name.endswith(".gz"):
        return gzip.decompress(raw)
    if path.name.endswith(".ko"):
        return raw
    raise MicrovmError(f"{path}: unsupported module compression")


def _init_sh() -> bytes:
    return importlib.resources.files("cnitrace.vagrant").joinpath("init.sh").read_bytes()


def base_initramfs(kver: str, *, cache_dir: Path = CACHE_DIR, paths: KernelPaths = KernelPaths(),
                   busybox: Path = Path("/bin/busybox")) -> Path:
    """Build (once per kernel and /init version) the busybox + modules initramfs; return its path."""
    moddir = paths.modules / kver
    try:
        order = module_load_order((moddir / "modules.dep").read_text(),
                                  (moddir / "modules.builtin").read_text()
                                  if (moddir / "modules.builtin").exists() else "",
                                  GUEST_MODULES)
    except OSError as exc:
        raise MicrovmError(f"cannot read the module list of {kver}: {exc}") from None
    init_sh = _init_sh()
    target = cache_dir / initramfs_cache_name(kver, init_sh, order)
    if target.is_file():
        if _cached_image_ok(target):
            return target
        print(f"microvm: warning: the cached initramfs {target} is damaged; building it again", file=sys.stderr)
    try:
        bb = busybox.read_bytes()
    except OSError:
        raise MicrovmError(f"{busybox}: missing (install busybox-static)") from None
    if not elf_is_static(bb):
        raise MicrovmError(f"{busybox} is dynamically linked (install busybox-static)")
    d, f = 0o040755, 0o100644
    entries = [CpioEntry(n, d) for n in ("bin", "dev", "proc", "sys", "lib", "lib/modules", "cnitrace")]
    entries.append(CpioEntry("dev/console", 0o020600, rdev=(5, 1)))
    entries.append(CpioEntry("bin/busybox", 0o100755, bb))
    entries.append(CpioEntry("init", 0o100755, init_sh))
    names = []
    for rel in order:
        name = _module_name(rel) + ".ko"
        entries.append(CpioEntry(f"lib/modules/{name}", f, _read_module(moddir / rel)))
        names.append(name)
    entries.append(CpioEntry("cnitrace/modules", f, ("\n".join(names) + "\n").encode()))
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache_dir / f".{target.name}.{os.getpid()}"
        tmp.write_bytes(newc_archive(entries))
        os.replace(tmp, target)  # atomic: concurrent runs may build the same image
    except OSError as exc:
        raise MicrovmError(f"cannot write the initramfs cache {cache_dir}: {exc.strerror}") from None
    for stale in cache_dir.glob(f"initramfs-{kver}-*.cpio"):   # images of an older /init
        if stale != target:
            with contextlib.suppress(OSError):
                stale.unlink()
    return target


def _cached_image_ok(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(6)
            f.seek(max(0, f.seek(0, os.SEEK_END) - 1024))
            return newc_complete(head, f.read())
    except OSError:
        return False


def job_archive(argv: Sequence[str], cwd: str, env: Mapping[str, str], nonce: str) -> bytes:
    """The per-run cpio appended to the cached one (the kernel unpacks concatenated archives)."""
    f = 0o100644
    return newc_archive([
        CpioEntry("cnitrace", 0o040755),
        CpioEntry("cnitrace/job.sh", f, job_script(argv, cwd, env).encode()),
        CpioEntry("cnitrace/nonce", f, nonce.encode() + b"\n"),
    ])


def _die_with_parent() -> None:
    """In the qemu child: get SIGKILL if we are killed with -9, so no VM outlives its runner."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class ConsoleRunner(Runner):
    """A Runner that streams a long-lived process's output instead of capturing it."""

    def stream(self, argv: Sequence[str], on_output: Callable[[str], None], *, timeout: float) -> int:
        """Run argv, feed decoded stdout to on_output as it arrives; kill it at the deadline."""
        if not all(isinstance(a, str) for a in argv):
            raise TypeError(f"argv must be strings: {argv!r}")
        try:
            proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    preexec_fn=_die_with_parent)
        except FileNotFoundError:
            raise ToolError(f"{argv[0]}: not installed (run `make provision`)") from None
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        deadline = time.monotonic() + timeout
        sel = selectors.DefaultSelector()
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        sel.register(fd, selectors.EVENT_READ)
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise MicrovmTimeout(f"timed out after {timeout:g} s; the VM was killed")
                if not sel.select(timeout=min(left, 1.0)):
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                on_output(decoder.decode(chunk))
            on_output(decoder.decode(b"", final=True))
            return proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise MicrovmTimeout(f"timed out after {timeout:g} s; the VM was killed") from None
        finally:
            sel.close()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()


def run_in_vm(argv: Sequence[str], *, timeout: float = 1500.0, kernel: str | None = None,
              mem_mb: int = 2048, smp: int = 2, cwd: str | None = None,
              environ: Mapping[str, str] | None = None, out: TextIO | None = None,
              runner: ConsoleRunner | None = None) -> int:
    """Boot, run argv in the guest, stream its output to `out`; return argv's exit status."""
    if not argv:
        raise UsageError("no command given (usage: ... -- CMD [ARGS...])")
    if timeout <= 0 or mem_mb < 256 or not 1 <= smp <= 64:
        raise UsageError("--timeout must be > 0, --mem >= 256, --smp between 1 and 64")
    out = out if out is not None else sys.stdout
    kver = resolve_kernel(kernel)
    base = base_initramfs(kver)
    nonce = secrets.token_hex(8)
    job = job_archive(argv, cwd or os.getcwd(), guest_env(os.environ if environ is None else environ), nonce)
    demux = ConsoleDemux(nonce)
    tail: list[str] = []

    def show(text: str) -> None:
        text = demux.feed(text)
        if text:
            out.write(text)
            out.flush()
            tail[:] = (tail + text.splitlines())[-3:]

    with Session() as session:
        # Recorded before it exists, so `cnitrace cleanup` removes it if this process is killed
        # with -9 (qemu itself dies with us: PR_SET_PDEATHSIG).
        tmp = Path("/tmp") / f"cnit-microvm-{os.getpid()}-{secrets.token_hex(4)}"
        session.track("path", str(tmp))
        tmp.mkdir(mode=0o700)
        initrd = tmp / "initrd.cpio"
        initrd.write_bytes(base.read_bytes() + job)
        argv_q = qemu_argv(Path("/boot") / f"vmlinuz-{kver}", initrd, mem_mb=mem_mb, smp=smp)
        rc = (runner or ConsoleRunner()).stream(argv_q, show, timeout=timeout)
    rest = demux.finish()
    if rest:
        out.write(rest)
        out.flush()
        tail[:] = (tail + rest.splitlines())[-3:]
    if not demux.started:
        boot = [_ANSI.sub("", line).strip() for line in demux.boot_log.replace("\r", "").splitlines()]
        boot = [line for line in boot if line]
        for line in boot[-20:]:
            print(f"console: {line}", file=sys.stderr)
        raise MicrovmError(f"the VM stopped (qemu exit {rc}) before running the command: {boot_failure(boot)}")
    if demux.status is None:
        last = next((line.strip() for line in reversed(tail) if line.strip()), "no output")
        raise MicrovmError(f"the VM stopped (qemu exit {rc}) without reporting the command's status; "
                           f"last console line: {last}")
    return demux.status


# --- command line ----------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage + error
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m cnitrace.vagrant.microvm",
                description="Run CMD inside a TCG microVM booted from a stock Debian kernel.")
    p.add_argument("--timeout", type=float, default=1500.0, help="seconds for boot + CMD (default 1500)")
    p.add_argument("--kernel", metavar="KVER", help="kernel version (default: newest usable)")
    p.add_argument("--mem", type=int, default=2048, metavar="MB")
    p.add_argument("--smp", type=int, default=2, metavar="N")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point and this tool's error boundary: one line on stderr, never a traceback."""
    args_in = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parser().parse_args(args_in)
        cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        return run_in_vm(cmd, timeout=args.timeout, kernel=args.kernel, mem_mb=args.mem, smp=args.smp)
    except CnitraceError as exc:
        print(f"microvm: {exc.message}", file=sys.stderr)
        return int(exc.exit_status)
    except KeyboardInterrupt as exc:   # the Session turns SIGINT and SIGTERM into this
        print("microvm: interrupted; the VM was killed", file=sys.stderr)
        return 128 + signal.SIGTERM if str(exc) == "SIGTERM" else int(ExitStatus.INTERRUPTED)


if __name__ == "__main__":
    raise SystemExit(main())
