"""Drop-reason names from the running kernel's BTF, not from a hand-written table.

`enum skb_drop_reason` grows with every kernel (6.1 had ~70 values, 6.18 has ~130), so a
table baked into cnitrace would mislabel drops; the kernel's own BTF is always right.
"""

from __future__ import annotations

from cnitrace.probes.btf import Btf, BtfError, BtfSet

DROP_ENUM = "skb_drop_reason"
_PREFIX = "SKB_DROP_REASON_"


def drop_reasons(btf: Btf | BtfSet) -> dict[int, str]:
    """Value -> short name (NETFILTER_DROP, NO_SOCKET, ...) as the kfree_skb tracepoint prints it."""
    out: dict[int, str] = {}
    for name, val in btf.enum(DROP_ENUM).items():
        short = name[len(_PREFIX):] if name.startswith(_PREFIX) else name.removeprefix("SKB_")
        out.setdefault(val, short)
    return out


def not_a_drop(btf: Btf | BtfSet) -> tuple[int, ...]:
    """Values kfree_skb reports for skbs that were not dropped (NOT_DROPPED_YET, CONSUMED)."""
    values = btf.enum(DROP_ENUM)
    return tuple(sorted(values[n] for n in ("SKB_NOT_DROPPED_YET", "SKB_CONSUMED") if n in values))


def reason_name(reasons: dict[int, str], value: int) -> str:
    return reasons.get(value, f"UNKNOWN_{value}")


__all__ = ["DROP_ENUM", "drop_reasons", "not_a_drop", "reason_name", "BtfError"]
