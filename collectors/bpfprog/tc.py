"""Pure parser for `tc [-s] [-d] filter show dev IFACE ingress|egress` text.

People paste the text form, often several devices at once, each after its command
(`$ tc filter show dev lxc1 ingress`) or a heading (`# dev lxc1 ingress`): the device and hook
are read from there. Every filter is kept (`TcFilter`): a u32 or flower filter at a hook runs
like the BPF program beside it, so it is counted; the BPF ones are also returned as the same
`Attachment` records the JSON parser gives, joined to bpftool's programs by id.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterable, Mapping

from cnitrace.collectors.base import Parsed, Warnings
from cnitrace.collectors.bpfprog.parse import Attachment
from cnitrace.collectors.pasted import is_command, paste_lines, prompt_command


@dataclasses.dataclass(frozen=True)
class TcFilter:
    """One filter at a hook. BPF filters carry their program; `packets`/`bytes` sum the
    filter's action statistics (`tc -s`), None when not printed."""

    iface: str
    hook: str
    kind: str                 # 'bpf', 'u32', 'flower', 'matchall' ...
    protocol: str
    pref: int
    chain: int = 0
    handle: str = ""
    prog_id: int | None = None
    prog_name: str = ""
    tag: str = ""
    direct_action: bool = False
    in_hw: bool | None = None
    packets: int | None = None
    bytes: int | None = None
    netns: str = ""

    @property
    def key(self) -> tuple:
        return ("tc-filter", self.netns, self.iface, self.hook, self.pref, self.chain, self.handle)

    @property
    def counters(self) -> Mapping[str, int]:
        return {} if self.packets is None else {"packets": self.packets, "bytes": self.bytes or 0}


_FILTER = re.compile(r"^filter\s+(?:parent\s+(\S+)\s+)?protocol\s+(\S+)\s+pref\s+(\d+)\s+(\S+)(?:\s+chain\s+(\d+))?(?:\s+(.*))?$")
# iproute2 before 4.13 (2017) prints no 'chain N': 'filter protocol all pref 49152 bpf handle 0x1 foo.o:[p2] ...' 
_DEV = re.compile(r"\bdev\s+(\S+?)(?:@\S+)?(?:\s|$)")
_HOOK = re.compile(r"\b(ingress|egress)\b|\bparent\s+(ffff:fff[23]|ffff:)")
_SENT = re.compile(r"^Sent (\d+) bytes (\d+) pkt")
_PARENT_HOOK = {"ffff:fff2": "ingress", "ffff:fff3": "egress", "ffff:": "ingress"}
_BPF_WORDS = {"direct-action", "not_in_hw", "in_hw", "skip_hw", "skip_sw", "jited", "not_jited", "shared"}
_BPF_KEYS = {"handle", "flowid", "classid", "id", "name", "tag", "load_time", "created_by_uid", "btf_id",
             "in_hw_count", "action"}


def _context(line: str) -> tuple[str, str] | None:
    """(device, hook) named by a command or a heading line: 'tc -s filter show dev lxc1 ingress',
    '# dev lxc1 egress', '=== dev: eth0 ingress ==='; None when the line names no device."""
    cmd = prompt_command(line)
    body = cmd if cmd is not None else line
    if not (is_command(body, "tc", "ip", "nsenter", "bash") or cmd is not None or body.lstrip("#=-— ").startswith("dev")):
        return None
    d = _DEV.search(body.replace("dev:", "dev"))
    if not d:
        return None
    h = _HOOK.search(body[d.end() - 1:])
    hook = (h.group(1) or _PARENT_HOOK.get(h.group(2), "")) if h else ""
    return d.group(1), hook


def _bpf_fields(rest: str) -> dict[str, str]:
    """'handle 0x1 flowid :1 cil_from_container-lxc1 direct-action not_in_hw id 1052 tag 5a8b jited'."""
    toks = rest.split()
    out: dict[str, str] = {}
    i = 0
    while i < len(toks):
        tok = toks[i]
        if tok in _BPF_KEYS and i + 1 < len(toks):
            out.setdefault(tok, toks[i + 1])
            i += 2
            continue
        if tok in _BPF_WORDS:
            out[tok] = "1"
        elif "bpf_name" not in out and "id" not in out:
            out["bpf_name"] = tok
        i += 1
    return out


def _filter(m: re.Match, iface: str, hook: str, netns: str) -> TcFilter | None:
    """A TcFilter from a 'filter ...' line, None for the per-pref and u32 hash-table lines that
    precede the filters themselves."""
    parent, proto, pref, kind, chain, rest = m.groups()
    chain, rest = chain or "0", rest or ""
    hook = hook or _PARENT_HOOK.get(parent or "", "")
    if kind == "u32":
        fh = re.search(r"\bfh (\S+)", rest)
        if not fh or fh.group(1).endswith(":") or "ht divisor" in rest:
            return None
        return TcFilter(iface, hook, kind, proto, int(pref), int(chain), fh.group(1),
                        in_hw=None if "in_hw" not in rest else "not_in_hw" not in rest, netns=netns)
    f = _bpf_fields(rest)
    if "handle" not in f:
        return None
    if kind != "bpf":
        return TcFilter(iface, hook, kind, proto, int(pref), int(chain), f["handle"], netns=netns)
    pid = f.get("id", "")
    return TcFilter(iface, hook, kind, proto, int(pref), int(chain), f["handle"],
                    int(pid) if pid.isascii() and pid.isdigit() else None,
                    f.get("name") or f.get("bpf_name", ""), f.get("tag", ""), "direct-action" in f,
                    None if "not_in_hw" not in f and "in_hw" not in f else "in_hw" in f, netns=netns)


def parse_tc_filters_text(text: str, iface: str = "", hook: str = "", netns: str = "") -> Parsed[TcFilter]:
    """Every filter in `tc [-s] filter show` text, for one device or several concatenated
    (each after its command or a '# dev X ingress' heading). `iface`/`hook` apply until a
    command or heading names another."""
    w = Warnings()
    out: list[TcFilter] = []
    dev, hk = iface, hook
    sent: list[tuple[int, int]] = []
    unknown = 0

    def close() -> None:
        if out and sent:
            out[-1] = dataclasses.replace(out[-1], packets=sum(p for _, p in sent), bytes=sum(b for b, _ in sent))
        sent.clear()

    for no, s in paste_lines(text, keep_prompts=True):
        m = _FILTER.match(s)
        if m:
            f = _filter(m, dev, hk, netns)
            if f is not None:
                close()
                unknown += not (f.iface and f.hook)
                out.append(f)
            continue
        if (c := _context(s)) is not None:
            close()
            dev, hk = c
            continue
        if (st := _SENT.match(s)):
            sent.append((int(st.group(1)), int(st.group(2))))
            continue
        if out and (s == "not_in_hw" or s.startswith("in_hw")):  # flower/matchall print it on its own line
            out[-1] = dataclasses.replace(out[-1], in_hw=s != "not_in_hw")
            continue
        if prompt_command(s) is not None or is_command(s, "tc"):
            continue
        if not out:
            w.add(f"not a tc filter line: {s[:120]}", no)
        # the rest are a filter's detail lines: u32 'match', flower keys, actions, backlog
    close()
    if unknown:
        w.add(f"{unknown} filter(s) without a known device or hook: pass iface/hook, or paste the tc command")
    return Parsed(tuple(out), w.freeze())


def parse_tc_filter_show(text: str, iface: str = "", hook: str = "", netns: str = "") -> Parsed[Attachment]:
    """The BPF programs attached by `tc filter show` text, as `Attachment`s (kind 'tc')."""
    parsed = parse_tc_filters_text(text, iface, hook, netns)
    w = Warnings()
    out: list[Attachment] = []
    for f in parsed.records:
        if f.kind != "bpf":
            continue
        if f.prog_id is None:
            w.add(f"bpf filter pref {f.pref} on {f.iface or '?'} without a program id (older tc?)")
            continue
        out.append(Attachment("tc", f.iface, f.hook, f.prog_id, f.prog_name, netns))
    return Parsed(tuple(out), (*parsed.warnings, *w.freeze()))


def filter_kinds(filters: Iterable[TcFilter]) -> dict[str, int]:
    """How many filters of each kind ('bpf', 'u32', 'flower' ...) the dump holds."""
    out: dict[str, int] = {}
    for f in filters:
        out[f.kind] = out.get(f.kind, 0) + 1
    return out
