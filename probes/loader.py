"""The only module that imports bcc: compiles a packaged `.bpf.c` file into a bcc.BPF.

Why one loader: bcc is a system package (Debian's python3-bpfcc) that may be absent or
broken, and it compiles at load time. Keeping it behind one function means the rest of
cnitrace imports without it, tests without root never touch it, and configuration reaches
C one way only: as `-DNAME=value` cflags (never by editing C text).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.resources
import os
import re
from pathlib import Path
from typing import Any, Iterator, Mapping

from cnitrace.core.errors import ToolError

DEFAULT_PACKAGE = "cnitrace.probes"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_VALUE = re.compile(r"^[A-Za-z0-9_.+\-x]+$")   # numbers, hex, identifiers: nothing that could inject C


def cflag_list(cflags: Mapping[str, Any] | None) -> list[str]:
    """{'CNIT_IFINDEX': 3, 'CNIT_DEBUG': True} -> ['-DCNIT_IFINDEX=3', '-DCNIT_DEBUG=1'].

    Values are validated so a cflag can define a constant but never smuggle code in.
    """
    out = []
    for name, value in (cflags or {}).items():
        if not _NAME.match(name):
            raise ValueError(f"invalid cflag name {name!r}")
        if isinstance(value, bool):
            value = int(value)
        text = str(value)
        if not _VALUE.match(text):
            raise ValueError(f"invalid value for cflag {name}: {text!r}")
        out.append(f"-D{name}={text}")
    return out


def source_text(source_filename: str, package: str = DEFAULT_PACKAGE) -> str:
    """The C text of a packaged BPF source (for `--print-bpf`-style inspection and unit tests)."""
    return importlib.resources.files(package).joinpath(source_filename).read_text(encoding="utf-8")


@contextlib.contextmanager
def source_path(source_filename: str, package: str = DEFAULT_PACKAGE) -> Iterator[Path]:
    """A real filesystem path to a packaged source; its folder also holds the shared headers."""
    res = importlib.resources.files(package).joinpath(source_filename)
    if not res.is_file():
        raise ToolError(f"BPF source {source_filename} not found in package {package}")
    with importlib.resources.as_file(res) as path:
        yield Path(path)


def import_bcc() -> Any:
    """Import bcc or raise ToolError saying how to get it (a venv needs --system-site-packages)."""
    try:
        import bcc  # noqa: PLC0415 - the one place bcc is imported
    except ImportError as exc:
        raise ToolError(f"bcc not importable ({exc}); install python3-bpfcc and create the venv "
                        "with --system-site-packages") from None
    return bcc


def load(source_filename: str, cflags: Mapping[str, Any] | None = None, *,
         package: str = DEFAULT_PACKAGE, autoload: bool = True, debug: int = 0) -> Any:
    """Compile `source_filename` from `package` and return the bcc.BPF object.

    autoload=False stops bcc from attaching `kprobe__*`/`tracepoint__*`/`kfunc__*` functions
    at construction: callers that try attach types one by one (doctor) need a failure in one
    to leave the others usable. Compile failures become a ToolError with one line.
    """
    bcc = import_bcc()
    flags = cflag_list(cflags)
    cls = bcc.BPF if autoload else _no_autoload_class(bcc)
    with source_path(source_filename, package) as path:
        # -w: the stand-in or distro headers make clang print pages of harmless warnings that
        # would bury the tool's own output; errors are still reported.
        flags += [f"-I{path.parent}", "-w"]
        try:
            return cls(src_file=str(path).encode(), cflags=flags, debug=debug)
        except Exception as exc:  # bcc raises bare Exception
            raise ToolError(f"{source_filename}: {exc}".splitlines()[0]) from None


_NO_AUTOLOAD: dict[int, type] = {}


def _no_autoload_class(bcc: Any) -> type:
    key = id(bcc.BPF)
    if key not in _NO_AUTOLOAD:
        _NO_AUTOLOAD[key] = type("BPFNoAutoload", (bcc.BPF,), {"_trace_autoload": lambda self: None})
    return _NO_AUTOLOAD[key]


def vmlinux_btf_id(name: str, attach_type: int) -> int:
    """The vmlinux BTF id a tracing program of `attach_type` aims at (for a BTF-typed tracepoint:
    the btf_trace_<name> typedef), found by the libbpf inside bcc's library."""

    fn = import_bcc().lib.libbpf_find_vmlinux_btf_id
    fn.restype, fn.argtypes = ctypes.c_int, [ctypes.c_char_p, ctypes.c_int]
    got = fn(name.encode(), attach_type)
    if got < 0:
        raise ToolError(f"{name}: not in the kernel's BTF ({os.strerror(-got)})")
    return got


def prog_type(name: str) -> int:
    """bcc's numeric program type for 'SCHED_CLS', 'XDP', 'TRACEPOINT', ... (for load_func)."""
    return getattr(import_bcc().BPF, name)


def pin(fd: int, path: str) -> None:
    """Pin a loaded program or map (by its fd) at `path` on bpffs, so it outlives this process."""

    bcc = import_bcc()
    if bcc.lib.bpf_obj_pin(int(fd), str(path).encode()) != 0:
        raise ToolError(f"could not pin BPF object at {path}: {os.strerror(ctypes.get_errno()) or 'failed'}")
