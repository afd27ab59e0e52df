"""Where each rule of a legacy iptables table sits in the kernel's table blob (IPv4).

Why: the time a packet spends walking rules it does not match is bound by memory, and it depends
on where the chain lies in the blob, not only on how many rules it has. Measured on the CI
machine (AMD EPYC, a 10,004-rule kube-router policy chain, every rule missed at the header): 16.7
ns per rule with its first rule at page offset 784, 10.4 ns at 1,952 (where the lab's restore puts
it), 9.6 ns at 936 — and the same figure at that offset plus 4 or 8 KiB. `calibrate.walk` replays
a chain at its page offset to price its walk; this module reads the layout that needs.

The blob is the table as the kernel holds it: `getsockopt(IPT_SO_GET_INFO)` then
`IPT_SO_GET_ENTRIES` on a raw socket, run inside the rules' namespace (`read_layout`); parsing it
(`parse_blob`) is pure. The kernel keeps the same byte layout (struct ipt_entry, 8-byte aligned,
`next_offset` to the next) behind a fixed header, so a rule's offset modulo the page is the same
in the blob and in the kernel's copy.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import socket
import struct
import sys
from typing import Mapping, Sequence

from cnitrace.core.errors import ToolError
from cnitrace.core.runner import DEFAULT_RUNNER, Runner

IPT_SO_GET_INFO, IPT_SO_GET_ENTRIES = 64, 65
INFO_SIZE = 84                   # struct ipt_getinfo
ENTRIES_HEADER = 40              # struct ipt_get_entries: name[32], size, then 8-aligned entries
ENTRY_SIZE = 112                 # struct ipt_entry without matches and target
HOOKS = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")
PAGE = 4096
NO_HOOK = 0xFFFFFFFF


@dataclasses.dataclass(frozen=True)
class ChainLayout:
    """A chain's rules in the blob: each rule's (offset, size) in order; the chain's own entries
    (a user chain's ERROR head and trailing RETURN, a built-in chain's policy) are not rules."""

    name: str
    rules: tuple[tuple[int, int], ...]

    @property
    def first_offset(self) -> int | None:
        return self.rules[0][0] if self.rules else None

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(s for _, s in self.rules)

    @property
    def length(self) -> int:
        return sum(self.sizes)


@dataclasses.dataclass(frozen=True)
class TableLayout:
    table: str
    size: int
    chains: Mapping[str, ChainLayout]

    def to_json(self) -> dict:
        return {"table": self.table, "size": self.size,
                "chains": {k: [list(r) for r in c.rules] for k, c in self.chains.items()}}

    @classmethod
    def from_json(cls, d: Mapping) -> "TableLayout":
        return cls(d["table"], int(d["size"]),
                   {k: ChainLayout(k, tuple((int(o), int(s)) for o, s in v)) for k, v in d["chains"].items()})


def _cstr(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode("ascii", "replace")


def parse_blob(table: str, blob: bytes, hook_entry: Sequence[int], underflow: Sequence[int]) -> TableLayout:
    """The table's chains and their rules' offsets and sizes (pure). Raises ValueError on a blob
    that is not a sequence of well-formed entries."""
    entries: list[tuple[int, int, str, bytes]] = []       # offset, size, target name, target data
    off = 0
    while off < len(blob):
        if off + ENTRY_SIZE > len(blob):
            raise ValueError(f"truncated entry at {off}")
        target_offset, next_offset = struct.unpack_from("=HH", blob, off + 88)
        if next_offset < ENTRY_SIZE or next_offset % 8 or off + next_offset > len(blob) \
                or not ENTRY_SIZE <= target_offset <= next_offset - 32:
            raise ValueError(f"bad entry at {off}: target_offset {target_offset}, next_offset {next_offset}")
        t = off + target_offset
        entries.append((off, next_offset, _cstr(blob[t + 2:t + 31]), blob[t + 32:off + next_offset]))
        off += next_offset
    at = {o: i for i, (o, *_ ) in enumerate(entries)}
    chains: dict[str, ChainLayout] = {}
    for h, name in enumerate(HOOKS):
        start = hook_entry[h] if h < len(hook_entry) else NO_HOOK
        end = underflow[h] if h < len(underflow) else NO_HOOK
        if start == NO_HOOK or start not in at or end not in at or end < start:
            continue
        chains[name] = ChainLayout(name, tuple((o, s) for o, s, *_ in entries[at[start]:at[end]]))
    heads = [i for i, (_, _, tgt, data) in enumerate(entries) if tgt == "ERROR"]
    for a, b in zip(heads, heads[1:] + [len(entries)]):
        name = _cstr(entries[a][3][:32])
        if name == "ERROR" or a + 1 >= b:        # the table's last entry; a head without a RETURN
            continue
        chains[name] = ChainLayout(name, tuple((o, s) for o, s, *_ in entries[a + 1:b - 1]))
    return TableLayout(table, len(blob), chains)


def _read(table: str) -> tuple[bytes, tuple[int, ...], tuple[int, ...]]:
    """The table's blob and hook offsets, from this process's namespace (needs CAP_NET_ADMIN)."""
    libc = ctypes.CDLL(None, use_errno=True)
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as s:
        info = ctypes.create_string_buffer(table.encode().ljust(32, b"\0"), INFO_SIZE)
        n = ctypes.c_uint(INFO_SIZE)
        if libc.getsockopt(s.fileno(), socket.IPPROTO_IP, IPT_SO_GET_INFO, info, ctypes.byref(n)) != 0:
            raise OSError(ctypes.get_errno(), f"IPT_SO_GET_INFO {table}")
        hook_entry = struct.unpack_from("=5I", info.raw, 36)
        underflow = struct.unpack_from("=5I", info.raw, 56)
        size = struct.unpack_from("=I", info.raw, 80)[0]
        buf = ctypes.create_string_buffer(ENTRIES_HEADER + size)
        buf[:32] = table.encode().ljust(32, b"\0")
        struct.pack_into("=I", buf, 32, size)
        n = ctypes.c_uint(ENTRIES_HEADER + size)
        if libc.getsockopt(s.fileno(), socket.IPPROTO_IP, IPT_SO_GET_ENTRIES, buf, ctypes.byref(n)) != 0:
            raise OSError(ctypes.get_errno(), f"IPT_SO_GET_ENTRIES {table}")
        return buf.raw[ENTRIES_HEADER:ENTRIES_HEADER + size], hook_entry, underflow


def read_layout(table: str, netns: str | None = None, runner: Runner = DEFAULT_RUNNER) -> TableLayout:
    """The legacy IPv4 table's layout in `netns` (read by this module run inside it)."""
    done = runner.run([sys.executable, "-m", "cnitrace.collectors.iptables.layout", table], netns=netns or None,
                      check=False, timeout=30)
    if done.returncode != 0:
        raise ToolError(f"iptables layout of {table}: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    try:
        return TableLayout.from_json(json.loads(done.stdout))
    except (ValueError, KeyError, TypeError) as exc:
        raise ToolError(f"iptables layout of {table}: unexpected output ({exc})") from None


def main(argv: Sequence[str]) -> int:
    table = argv[0] if argv else "filter"
    try:
        blob, hooks, under = _read(table)
        print(json.dumps(parse_blob(table, blob, hooks, under).to_json()))
    except (OSError, ValueError) as exc:
        print(f"cnitrace: {table}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
