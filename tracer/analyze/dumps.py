"""One saved tool output, detected and parsed: the unit every analysis reads (pure).

Parsers answer in a few shapes (a `Parsed`, a `(Ruleset, warnings)` pair, a status object);
`read_section` turns each into a `Dump` with the records, the parser's warnings and what the
text or the prompt said about it (family, backend, whether rules carried counters, the device
of a tc dump, the OVS bridge). A parser that is missing from this build, or that fails on a
hostile text, costs that section a warning, never the analysis.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

from cnitrace.analyze.formats import PARSERS, Detected, command_hints, detect
from cnitrace.analyze.sections import Section, split_sections

_RULE_COUNTERS = re.compile(r"^\s*\[\d+:\d+\]\s+-A\s", re.M)


@dataclasses.dataclass(frozen=True)
class Dump:
    """A section of a file, its format and what its parser read."""

    source: str                   # the file (as given)
    section: int                  # 1-based among the file's sections
    command: str | None           # the prompt line's command, if the paste had one
    detected: Detected
    data: Any                     # a Ruleset (iptables formats), else the records tuple
    warnings: tuple[str, ...]
    meta: Mapping[str, Any]       # family, backend, rule_counters, table, iface, hook, bridge, lines

    @property
    def format(self) -> str:
        return self.detected.format or "unknown"

    @property
    def label(self) -> str:
        return f"{self.source}#{self.section}" if self.section > 1 or self.meta.get("sections", 1) > 1 \
            else self.source

    @property
    def records(self) -> tuple:
        rs = self.data
        if hasattr(rs, "chains") and hasattr(rs, "rules"):
            return (*rs.chains, *rs.rules)
        return tuple(rs) if isinstance(rs, (tuple, list)) else ()


@dataclasses.dataclass(frozen=True)
class Skipped:
    """A section that is not a known tool's output (or whose parser is not available)."""

    source: str
    section: int
    command: str | None
    line: int
    reason: str


def _parsed(x: Any) -> bool:
    return hasattr(x, "records") and hasattr(x, "warnings") and not hasattr(x, "rules")


def _normalise(result: Any) -> tuple[Any, tuple[str, ...], dict[str, Any]]:
    """(data, warnings, extra meta) from any parser result shape: a Parsed, (Ruleset, warnings),
    (Parsed, extra records such as dpctl's ports), a sequence, or one status object."""
    if isinstance(result, tuple) and len(result) == 2 and (_parsed(result[0]) or hasattr(result[0], "rules")):
        first, second = result
        items = tuple(second) if isinstance(second, tuple | list) else (second,)
        strings = all(isinstance(x, str) for x in items)
        if _parsed(first):
            data, warnings = tuple(first.records), tuple(first.warnings)
            return (data, warnings + items, {}) if strings else (data, warnings, {"extra_records": items})
        return first, items if strings else (), {}
    if _parsed(result):
        return tuple(result.records), tuple(result.warnings), {}
    if isinstance(result, tuple | list):
        return tuple(result), (), {}
    return (result,), tuple(getattr(result, "warnings", ()) or ()), {}


def _family(text: str, hints: Mapping[str, Any]) -> str | None:
    """The prompt's family (ip6tables); None lets the parser read it from the text."""
    return hints.get("family")


def _call(fmt: str, fn: Any, text: str, hints: Mapping[str, Any]) -> Any:
    """Call a parser with the arguments its format takes."""
    if fmt == "iptables-save":
        return fn(text, _family(text, hints), hints.get("backend"))
    if fmt == "iptables-list":
        return fn(text, _family(text, hints))
    if fmt == "ovs-flows":
        return fn(text, hints.get("bridge", ""))
    if fmt == "tc-filter-json":
        return fn(text, hints.get("iface", "?"), hints.get("hook", "ingress"))
    if fmt == "tc-filter-text":
        return fn(text, hints.get("iface", ""), hints.get("hook", ""))
    if fmt == "calico-counters":
        return fn(text, hints.get("iface", ""))
    if fmt == "calico-policy":
        return fn(text, hints.get("iface", ""), hints.get("hook", ""))
    return fn(text)


def _table_from_hint(data: Any, table: str | None, guessed: bool = False) -> Any:
    """`iptables -t nat -L` prints no table name: take it from the command (also over the parser's
    guess from the chain names: a mangle listing of PREROUTING alone looks like nat)."""
    if not table or not hasattr(data, "rules"):
        return data
    tables = {c.table for c in data.chains}
    if tables != {"filter"} and not (guessed and len(tables) == 1):
        return data
    return dataclasses.replace(data, chains=tuple(dataclasses.replace(c, table=table) for c in data.chains),
                               rules=tuple(dataclasses.replace(r, table=table) for r in data.rules))


def _json_text(text: str) -> str:
    """JSON as pasted from kubectl and jq: without kubectl's 'Defaulted container ...' notice, and a
    stream of objects (`jq '.[] | select(...)'`) made one array; any other text unchanged."""
    body = text.lstrip()
    while body.startswith("Defaulted container"):
        body = body.split("\n", 1)[1].lstrip() if "\n" in body else ""
    if body[:1] not in ("{", "["):
        return text
    import json
    dec, values, i = json.JSONDecoder(), [], 0
    try:
        while i < len(body):
            value, i = dec.raw_decode(body, i)
            values.append(value)
            while i < len(body) and body[i].isspace():
                i += 1
    except ValueError:
        return text if not values else body     # not JSON after all, or one value and trailing text
    if len(values) > 1 and all(isinstance(v, dict) for v in values):
        return json.dumps(values)
    return body


def read_section(section: Section, source: str, index: int, sections: int = 1) -> Dump | Skipped:
    """Detect and parse one section (pure; never raises)."""
    text = _json_text(section.text)
    if text is not section.text:
        section = dataclasses.replace(section, text=text)
    det = detect(section.text, section.command)
    if det.format is None:
        return Skipped(source, index, section.command, section.line, det.reason)
    parser = PARSERS[det.format]
    hints = command_hints(section.command)
    try:
        fn = parser.load()
    except (ImportError, AttributeError) as exc:
        return Skipped(source, index, section.command, section.line,
                       f"looks like {parser.description} ({det.reason}), but this build has no parser for it "
                       f"({parser.module}.{parser.function}: {exc.__class__.__name__})")
    try:
        data, warnings, extra = _normalise(_call(det.format, fn, section.text, hints))
        for more in parser.load_extra():
            more_data, more_w, _ = _normalise(more(section.text))
            extra["extra_records"] = (*extra.get("extra_records", ()), *more_data)
    except Exception as exc:  # noqa: BLE001 - a parser's bug on a hostile text costs this section only
        return Skipped(source, index, section.command, section.line,
                       f"{parser.module}.{parser.function} failed on it ({exc.__class__.__name__}: "
                       f"{str(exc).splitlines()[0][:120] if str(exc) else ''})")
    bad_json = next((x for x in warnings if "not JSON" in x), None)
    if bad_json and not data:
        # JSON that does not load (trailing commas, a cut paste) holds nothing: one clear reason,
        # never "0 programs"
        return Skipped(source, index, section.command, section.line,
                       f"looks like {parser.description}, but {bad_json}")
    guessed = False
    if det.format in ("iptables-list", "iptables-save") and hints.get("table"):
        # the command named the table (`-t nat`; a listing lists filter by default): it beats the guess
        kept = tuple(x for x in warnings if "does not name its table" not in x and "no *table header" not in x)
        guessed, warnings = len(kept) < len(warnings), kept
    meta: dict[str, Any] = {**hints, **extra, "line": section.line, "sections": sections,
                            "provenance": section.provenance}
    if det.format == "ovs-vsctl-show":   # the ports say whose br-int it is (OVN's or Antrea's)
        meta["ports"] = tuple(dict.fromkeys(re.findall(r'^\s*Port\s+"?([\w.-]+)"?\s*$', section.text, re.M)))
    if hasattr(data, "rules") and hasattr(data, "chains"):
        data = _table_from_hint(data, hints.get("table"), guessed)
        counted = getattr(data, "rule_counters", None)
        if counted is None:   # a parser without the flag: [p:b] in the text says it
            counted = bool(_RULE_COUNTERS.search(section.text)) or det.format == "iptables-list"
        meta["rule_counters"] = bool(counted)
        meta["approximate"] = bool(getattr(data, "approximate", False))
        fams = {c.family for c in data.chains}
        meta["family"] = fams.pop() if len(fams) == 1 else meta.get("family", "ipv4")
        bes = {c.backend for c in data.chains}
        meta["backend"] = bes.pop() if len(bes) == 1 else meta.get("backend", "")
    return Dump(source, index, section.command, det, data, warnings, meta)


# what a copy from a web page or an editor adds that no tool prints: a byte-order mark, zero-width
# spaces and joiners (gone), no-break spaces (plain spaces). `nat\u200b` is not the nat table.
_INVISIBLE = {0xFEFF: None, 0x200B: None, 0x200C: None, 0x200D: None, 0x2060: None, 0xA0: 0x20}


def read_text(text: str, source: str) -> list[Dump | Skipped]:
    """Every section of one file's text, detected and parsed (pure; never raises)."""
    if not isinstance(text, str):
        return [Skipped(source, 1, None, 1, f"not text ({type(text).__name__})")]
    sections = split_sections(text.translate(_INVISIBLE))
    if not sections:
        return [Skipped(source, 1, None, 1, "only prompt lines, no output after them (were the output's line "
                        "breaks lost?)" if text.strip() else "empty")]
    return [read_section(s, source, i, len(sections)) for i, s in enumerate(sections, 1)]
