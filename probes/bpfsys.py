"""The bpf(2) calls bcc does not make for us: loading a BTF-aimed tracing program and linking it.

bcc compiles (maps exist, their fds are already in the instructions: `BPF.dump_func`), but
it resolves tracing targets in vmlinux by function name only. A program aimed at another
BPF program (fentry on a tc program) or at a BTF-typed tracepoint (tp_btf, its
btf_trace_<name> type) is loaded here: BPF_PROG_TYPE_TRACING with the expected attach type
and attach_btf_id (+ attach_prog_fd for a program target), then BPF_RAW_TRACEPOINT_OPEN with
no name makes the link. BPF netfilter programs (6.4+) are loaded the same way (BPF_PROG_TYPE_NETFILTER, expected
attach type BPF_NETFILTER) and linked with BPF_LINK_CREATE at a (pf, hook, priority) in the
calling thread's network namespace (cnitrace.probes.nfbracket). Everything is an fd of this
process: closing it detaches.
Packing and decoding are pure (tested against the uapi layout); the syscall is at the edge.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import os
import platform
import re
import struct
from pathlib import Path
from typing import Any

from cnitrace.core.errors import ToolError

# bpf(2) commands, program and attach types (uapi/linux/bpf.h)
BPF_PROG_LOAD, BPF_PROG_GET_FD_BY_ID, BPF_OBJ_GET_INFO_BY_FD, BPF_RAW_TRACEPOINT_OPEN = 5, 13, 15, 17
BPF_ENABLE_STATS = 32
BPF_PROG_TYPE_TRACING, BPF_TRACE_RAW_TP, BPF_TRACE_FENTRY, BPF_TRACE_FEXIT = 26, 23, 24, 25
ATTR_SIZE = 144                    # sizeof(union bpf_attr) in 6.x; unused tail bytes stay zero
INFO_SIZE = 216                    # struct bpf_prog_info up to recursion_misses
FUNC_INFO_REC = 8                  # struct bpf_func_info {u32 insn_off; u32 type_id;}
PROG_TYPES = {3: "sched_cls", 4: "sched_act", 6: "xdp", 32: "netfilter"}
# BPF netfilter programs (6.4+): a program type, its attach type, and BPF_LINK_CREATE
BPF_MAP_CREATE, BPF_MAP_LOOKUP_ELEM, BPF_LINK_CREATE = 0, 1, 28
BPF_PROG_TYPE_NETFILTER, BPF_NETFILTER = 32, 45
BPF_MAP_TYPE_ARRAY = 2
NFPROTO_IPV4, NFPROTO_IPV6 = 2, 10
NF_ACCEPT = 1


# --- pure: bpf_attr packing and decoding -------------------------------------------------------

def prog_load_attr(*, insns: int, insn_cnt: int, license: int, name: bytes, attach_type: int,
                   attach_btf_id: int, attach_prog_fd: int, log_buf: int = 0, log_size: int = 0,
                   log_level: int = 0, prog_type: int = BPF_PROG_TYPE_TRACING) -> bytes:
    """BPF_PROG_LOAD of a tracing program aimed at one function of another BPF program (or,
    with `prog_type`, of another type with an expected attach type, e.g. netfilter).
    Pointers (insns, license, log_buf) are addresses of buffers the caller keeps alive."""
    a = bytearray(ATTR_SIZE)
    struct.pack_into("=IIQQIIQ", a, 0, prog_type, insn_cnt, insns, license, log_level,
                     log_size, log_buf)
    a[48:64] = name[:15].ljust(16, b"\0")               # prog_name (BPF_OBJ_NAME_LEN)
    struct.pack_into("=I", a, 68, attach_type)          # expected_attach_type
    struct.pack_into("=II", a, 108, attach_btf_id, attach_prog_fd)
    return bytes(a)


def link_create_netfilter_attr(prog_fd: int, pf: int, hooknum: int, priority: int, flags: int = 0) -> bytes:
    """BPF_LINK_CREATE of a netfilter program: link_create {prog_fd, target_fd, attach_type,
    flags} then the union's netfilter {pf, hooknum, priority (s32), flags}."""
    a = bytearray(ATTR_SIZE)
    struct.pack_into("=IIII", a, 0, prog_fd, 0, BPF_NETFILTER, 0)
    struct.pack_into("=IIiI", a, 16, pf, hooknum, priority, flags)
    return bytes(a)


def map_create_attr(map_type: int, key_size: int, value_size: int, max_entries: int, name: bytes = b"") -> bytes:
    a = bytearray(ATTR_SIZE)
    struct.pack_into("=IIIII", a, 0, map_type, key_size, value_size, max_entries, 0)
    a[28:44] = name[:15].ljust(16, b"\0")              # map_name (BPF_OBJ_NAME_LEN)
    return bytes(a)


def map_elem_attr(map_fd: int, key: int, value: int, flags: int = 0) -> bytes:
    a = bytearray(ATTR_SIZE)
    struct.pack_into("=IIQQQ", a, 0, map_fd, 0, key, value, flags)
    return bytes(a)


def insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    """One eBPF instruction (struct bpf_insn, little-endian)."""
    return struct.pack("<BBhi", code, (dst & 0xF) | ((src & 0xF) << 4), off, imm)


def counting_program(map_fd: int, ret: int = NF_ACCEPT) -> bytes:
    """A minimal program that adds 1 to slot 0 of an array map (u32 key, u64 value) and returns
    `ret`: what the doctor trial links as a netfilter program to see it run on packets."""
    return b"".join((
        insn(0x62, dst=10, off=-4, imm=0),            # *(u32 *)(r10 - 4) = 0
        insn(0xBF, dst=2, src=10),                    # r2 = r10
        insn(0x07, dst=2, imm=-4),                    # r2 += -4
        insn(0x18, dst=1, src=1, imm=map_fd),         # r1 = map (ld_imm64, BPF_PSEUDO_MAP_FD)
        insn(0x00),
        insn(0x85, imm=1),                            # call bpf_map_lookup_elem
        insn(0x15, dst=0, off=2, imm=0),              # if r0 == 0 goto +2
        insn(0xB7, dst=1, imm=1),                     # r1 = 1
        insn(0xDB, dst=0, src=1, off=0, imm=0),       # lock *(u64 *)(r0 + 0) += r1
        insn(0xB7, dst=0, imm=ret),                   # r0 = ret
        insn(0x95),                                   # exit
    ))


def get_fd_by_id_attr(prog_id: int) -> bytes:
    a = bytearray(ATTR_SIZE)
    struct.pack_into("=I", a, 0, prog_id)
    return bytes(a)


def obj_info_attr(fd: int, info: int, info_len: int) -> bytes:
    a = bytearray(ATTR_SIZE)
    struct.pack_into("=IIQ", a, 0, fd, info_len, info)
    return bytes(a)


def raw_tp_open_attr(prog_fd: int) -> bytes:
    """BPF_RAW_TRACEPOINT_OPEN with name NULL: attach a loaded fentry/fexit program (5.5+)."""
    a = bytearray(ATTR_SIZE)
    struct.pack_into("=QI", a, 0, 0, prog_fd)
    return bytes(a)


def func_info_request(nr: int, addr: int) -> bytes:
    """A bpf_prog_info buffer asking only for `nr` func_info records at `addr`."""
    a = bytearray(INFO_SIZE)
    struct.pack_into("=IQI", a, 132, FUNC_INFO_REC, addr, nr)
    return bytes(a)


@dataclasses.dataclass(frozen=True)
class ProgInfo:
    """The fields of struct bpf_prog_info this module reads."""

    id: int
    type: int
    name: str
    btf_id: int
    nr_func_info: int
    func_info_rec_size: int
    run_time_ns: int
    run_cnt: int
    recursion_misses: int

    @property
    def type_name(self) -> str:
        return PROG_TYPES.get(self.type, str(self.type))


def parse_prog_info(buf: bytes) -> ProgInfo:
    """Decode struct bpf_prog_info (as BPF_OBJ_GET_INFO_BY_FD filled it)."""
    if len(buf) < INFO_SIZE:
        buf = bytes(buf) + bytes(INFO_SIZE - len(buf))
    ptype, pid = struct.unpack_from("=II", buf, 0)
    name = bytes(buf[64:80]).split(b"\0", 1)[0].decode("utf-8", "replace")
    btf_id, rec_size = struct.unpack_from("=II", buf, 128)
    (nr_func,) = struct.unpack_from("=I", buf, 144)
    run_time, run_cnt, misses = struct.unpack_from("=QQQ", buf, 192)
    return ProgInfo(pid, ptype, name, btf_id, nr_func, rec_size, run_time, run_cnt, misses)


def main_func_type_id(func_info: bytes, rec_size: int = FUNC_INFO_REC) -> int | None:
    """The BTF FUNC id of the program's main function: the func_info record at insn 0."""
    if rec_size < FUNC_INFO_REC:
        return None
    for off in range(0, len(func_info) - FUNC_INFO_REC + 1, rec_size):
        insn_off, type_id = struct.unpack_from("=II", func_info, off)
        if insn_off == 0:
            return type_id or None
    return None


def last_log_line(log: bytes) -> str:
    """The verifier's verdict: its last non-empty line that is not the closing statistics."""
    lines = [l.strip() for l in log.split(b"\0", 1)[0].decode("utf-8", "replace").splitlines()
             if l.strip() and not l.startswith(("processed ", "verification time"))]
    return lines[-1][:200] if lines else ""


# --- I/O: bpf(2) -----------------------------------------------------------------------------

_LIBC: Any = None
NR_BPF = {"x86_64": 321, "aarch64": 280, "armv7l": 386, "ppc64le": 361, "s390x": 351, "riscv64": 280}


def _bpf(cmd: int, attr: bytes) -> int:
    """bpf(cmd, attr); returns the result, or raises OSError with errno."""
    return _bpf_buf(cmd, ctypes.create_string_buffer(attr, len(attr)))


def enable_stats_fd(stats_type: int = 0) -> int:
    """bpf(BPF_ENABLE_STATS, {type}): an fd that keeps run-time stats on while open (type 0:
    BPF_STATS_RUN_TIME). Raises OSError."""
    a = bytearray(ATTR_SIZE)
    struct.pack_into("=I", a, 0, stats_type)
    return _bpf(BPF_ENABLE_STATS, bytes(a))


def prog_fd_by_id(prog_id: int) -> int:
    return _bpf(BPF_PROG_GET_FD_BY_ID, get_fd_by_id_attr(prog_id))


def prog_info(fd: int) -> tuple[ProgInfo, int | None]:
    """The program's info and its main function's BTF id (None without func_info)."""
    buf = ctypes.create_string_buffer(INFO_SIZE)
    _bpf(BPF_OBJ_GET_INFO_BY_FD, obj_info_attr(fd, ctypes.addressof(buf), INFO_SIZE))
    info = parse_prog_info(buf.raw)
    if not info.btf_id or not info.nr_func_info:
        return info, None
    recs = ctypes.create_string_buffer(info.nr_func_info * FUNC_INFO_REC)
    req = ctypes.create_string_buffer(func_info_request(info.nr_func_info, ctypes.addressof(recs)), INFO_SIZE)
    _bpf(BPF_OBJ_GET_INFO_BY_FD, obj_info_attr(fd, ctypes.addressof(req), INFO_SIZE))
    return info, main_func_type_id(recs.raw, FUNC_INFO_REC)


def load_tracing(insns: bytes, *, attach_type: int, btf_id: int, target_fd: int, name: str) -> int:
    """Load one fentry/fexit program aimed at `target_fd`'s main function (or a tp_btf at a
    vmlinux btf_id); the verifier's last line is in the error when it refuses."""
    return _load(insns, name, prog_type=BPF_PROG_TYPE_TRACING, attach_type=attach_type, btf_id=btf_id,
                 target_fd=target_fd, log_size=1 << 16)


def load_program(insns: bytes, *, prog_type: int, attach_type: int, name: str) -> int:
    """Load instructions (bcc's dump_func, map fds in place) as a program of `prog_type` with
    an expected attach type (netfilter: BPF_PROG_TYPE_NETFILTER / BPF_NETFILTER)."""
    return _load(insns, name, prog_type=prog_type, attach_type=attach_type, btf_id=0, target_fd=0, log_size=1 << 20)


def _load(insns: bytes, name: str, *, prog_type: int, attach_type: int, btf_id: int, target_fd: int,
          log_size: int) -> int:
    """BPF_PROG_LOAD without a log; on refusal, once more with one, only to say why."""
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(b"GPL")

    def attempt(log_level: int, log: Any) -> int:
        return _bpf(BPF_PROG_LOAD, prog_load_attr(
            insns=ctypes.addressof(code), insn_cnt=len(insns) // 8, license=ctypes.addressof(lic),
            name=name.encode(), attach_type=attach_type, attach_btf_id=btf_id, attach_prog_fd=target_fd,
            log_buf=ctypes.addressof(log) if log is not None else 0, log_size=len(log) if log is not None else 0,
            log_level=log_level, prog_type=prog_type))
    try:
        return attempt(0, None)
    except OSError as exc:
        log = ctypes.create_string_buffer(log_size)
        try:
            attempt(1, log)   # again, only to learn why
        except OSError:
            pass
        raise ToolError(f"loading {name}: {exc.strerror}" + (f" ({last_log_line(log.raw)})"
                                                              if last_log_line(log.raw) else "")) from None


def link_netfilter(prog_fd: int, pf: int, hooknum: int, priority: int, flags: int = 0) -> int:
    """Link a netfilter program at (pf, hook, priority) in the calling thread's network
    namespace; the program runs while the returned fd is open, wherever that fd is used
    later (EINVAL: a family other than ipv4/ipv6, or priority INT_MIN/INT_MAX)."""
    return _bpf(BPF_LINK_CREATE, link_create_netfilter_attr(prog_fd, pf, hooknum, priority, flags))


def map_create(map_type: int, key_size: int, value_size: int, max_entries: int, name: str = "") -> int:
    return _bpf(BPF_MAP_CREATE, map_create_attr(map_type, key_size, value_size, max_entries, name.encode()))


def map_lookup_u64(map_fd: int, key: int) -> int:
    """The u64 value at u32 `key` of an array map."""
    k = ctypes.create_string_buffer(struct.pack("=I", key), 4)
    v = ctypes.create_string_buffer(8)
    _bpf(BPF_MAP_LOOKUP_ELEM, map_elem_attr(map_fd, ctypes.addressof(k), ctypes.addressof(v)))
    return struct.unpack("=Q", v.raw)[0]


def attach_tracing(prog_fd: int) -> int:
    """A link fd: the program runs while it is open."""
    return _bpf(BPF_RAW_TRACEPOINT_OPEN, raw_tp_open_attr(prog_fd))


def fd_ids(fd: int) -> dict[str, int]:
    """prog_id / map_id / link_id of an fd, from /proc/self/fdinfo."""
    try:
        text = Path(f"/proc/self/fdinfo/{fd}").read_text()
    except OSError:
        return {}
    return {k: int(v) for k, v in re.findall(r"^(prog_id|map_id|link_id):\s*(\d+)", text, re.M)}


# --- BPF_PROG_TEST_RUN: run a loaded program once on given packet bytes (no attach, no kprobe) ---
BPF_PROG_TEST_RUN = 10
SKB_CTX_SIZE = 192                 # sizeof(struct __sk_buff) in 6.x (hwtstamp ends at 192)
SKB_MARK_OFF, SKB_PRIORITY_OFF, SKB_IFINDEX_OFF, SKB_TC_CLASSID_OFF = 8, 32, 40, 72


def test_run_attr(prog_fd: int, *, data_in: int, data_size_in: int, data_out: int, data_size_out: int,
                  ctx_in: int = 0, ctx_size_in: int = 0, ctx_out: int = 0, ctx_size_out: int = 0,
                  repeat: int = 1, flags: int = 0, cpu: int = 0) -> bytes:
    """union bpf_attr's `test` struct (prog_fd, retval, data_size_in/out, data_in/out, repeat,
    duration, ctx_size_in/out, ctx_in/out, flags, cpu, batch_size)."""
    a = bytearray(ATTR_SIZE)
    struct.pack_into("=IIIIQQII", a, 0, prog_fd, 0, data_size_in, data_size_out, data_in, data_out, repeat, 0)
    struct.pack_into("=IIQQII", a, 40, ctx_size_in, ctx_size_out, ctx_in, ctx_out, flags, cpu)
    return bytes(a)


@dataclasses.dataclass(frozen=True)
class TestRun:
    """What one BPF_PROG_TEST_RUN returned: the program's return code, its run time (ns,
    averaged over `repeat`), the packet it left and, for skb programs, the __sk_buff after."""

    retval: int
    duration_ns: int
    data_out: bytes
    ctx_out: bytes = b""

    @property
    def mark(self) -> int | None:
        return struct.unpack_from("=I", self.ctx_out, SKB_MARK_OFF)[0] if len(self.ctx_out) >= 12 else None


def parse_test_run_attr(attr: bytes) -> tuple[int, int, int, int]:
    """(retval, data_size_out, duration, ctx_size_out) from the attr the kernel wrote back."""
    _, retval, _, size_out = struct.unpack_from("=IIII", attr, 0)
    duration = struct.unpack_from("=I", attr, 36)[0]
    ctx_out = struct.unpack_from("=I", attr, 44)[0]
    return retval, size_out, duration, ctx_out


def prog_test_run(prog_fd: int, data: bytes, *, repeat: int = 1, skb_ctx: bool = True,
                  mark: int = 0, out_size: int = 4096) -> TestRun:
    """Run program `prog_fd` on `data` (an Ethernet frame for tc/XDP) with BPF_PROG_TEST_RUN.

    It is a replay in the calling thread's network namespace, not the packet's real path: the
    program's map side effects (counters, conntrack entries) do happen. tc (sched_cls) programs
    take an __sk_buff context (mark settable, read back after); BPF_F_TEST_RUN_ON_CPU is only
    accepted for raw tracepoints, so skb/XDP runs go on the calling CPU. Raises OSError."""
    din = ctypes.create_string_buffer(data, len(data))
    dout = ctypes.create_string_buffer(max(out_size, len(data) + 256))
    cin = cout = None
    if skb_ctx:
        ctx = bytearray(SKB_CTX_SIZE)
        struct.pack_into("=I", ctx, SKB_MARK_OFF, mark)
        cin = ctypes.create_string_buffer(bytes(ctx), SKB_CTX_SIZE)
        cout = ctypes.create_string_buffer(SKB_CTX_SIZE)
    attr = ctypes.create_string_buffer(test_run_attr(
        prog_fd, data_in=ctypes.addressof(din), data_size_in=len(data), data_out=ctypes.addressof(dout),
        data_size_out=len(dout), ctx_in=ctypes.addressof(cin) if cin else 0, ctx_size_in=SKB_CTX_SIZE if cin else 0,
        ctx_out=ctypes.addressof(cout) if cout else 0, ctx_size_out=SKB_CTX_SIZE if cout else 0,
        repeat=repeat), ATTR_SIZE)
    _bpf_buf(BPF_PROG_TEST_RUN, attr)
    retval, size_out, duration, ctx_size = parse_test_run_attr(attr.raw)
    return TestRun(retval, duration, dout.raw[:size_out], cout.raw[:ctx_size] if cout else b"")


def _bpf_buf(cmd: int, buf: Any) -> int:
    """bpf(cmd, buf) on a caller-owned buffer, so the kernel's write-back (test-run results) is kept.
    The one bpf(2) call site of cnitrace (bcc makes its own)."""
    global _LIBC
    nr = NR_BPF.get(platform.machine())
    if nr is None:
        raise OSError(0, f"bpf() syscall number unknown for {platform.machine()}")
    if _LIBC is None:
        _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    ret = _LIBC.syscall(ctypes.c_long(nr), ctypes.c_int(cmd), buf, ctypes.c_uint(ctypes.sizeof(buf)))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret
