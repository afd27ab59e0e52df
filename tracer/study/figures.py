"""The study's published figures, from the data file beside this module (figures.json), never from code.

`validate()` is pure: it checks the file's structure and that every figure is a shape the
comparison understands, and returns frozen records. A figure DESIGN.md does not give is recorded
as kind "not_given" (with why), so a family without a number is visible rather than invented.
"""

from __future__ import annotations

import dataclasses
import json
from importlib import resources
from typing import Any, Mapping

from cnitrace.core.errors import UsageError

FAMILIES = ("policy", "complexity", "concurrency", "placement", "l7")
SHAPE_KINDS = ("relative_change", "absolute", "ratio", "occurs", "not_given")
CITATION_KEYS = ("title", "authors", "venue", "year")
PCT_SLACK = 5.0      # a stated percentage may differ this much from its own from→to values without a note


@dataclasses.dataclass(frozen=True)
class Figure:
    id: str
    family: str
    cni: str                       # a datapath name, "*" (all others), "others" or "iptables"
    metric: str
    stated: str                    # the figure's words, as DESIGN.md reports them
    shape: Mapping[str, Any]
    cnis: tuple[str, ...] = ()     # for a group ("iptables"): its members
    note: str = ""
    proxy: str = ""

    @property
    def given(self) -> bool:
        return self.shape["kind"] != "not_given"

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["shape"], d["cnis"] = dict(self.shape), list(self.cnis)
        return d


@dataclasses.dataclass(frozen=True)
class Figures:
    citation: Mapping[str, Any]
    families: Mapping[str, Mapping[str, str]]    # family -> title, study_setup, finding
    figures: tuple[Figure, ...]

    def of(self, family: str) -> list[Figure]:
        return [f for f in self.figures if f.family == family]

    def for_cni(self, family: str, cni: str) -> Figure | None:
        """The family's change figure for one datapath (its own or its group's), else its "not given"."""
        fs = self.of(family)
        own = next((f for f in fs if (f.cni == cni or cni in f.cnis) and f.shape["kind"] == "relative_change"), None)
        return own or next((f for f in fs if f.cni == "*"), None)

    def occurs_for(self, family: str, cni: str) -> Figure | None:
        """A figure saying something happened (failures at 200 pods) for this datapath, if any."""
        return next((f for f in self.of(family) if (f.cni == cni or cni in f.cnis) and f.shape["kind"] == "occurs"),
                    None)

    def get(self, fid: str) -> Figure | None:
        return next((f for f in self.figures if f.id == fid), None)

    def citation_text(self) -> str:
        c = self.citation
        return (f"{c.get('description') or 'the study'} — title: {c['title']}; authors: {c['authors']}; "
                f"venue: {c['venue']}; year: {c['year']}")

    def to_json(self) -> dict[str, Any]:
        return {"citation": dict(self.citation), "families": {k: dict(v) for k, v in self.families.items()},
                "figures": [f.to_json() for f in self.figures]}


def _need(d: Mapping[str, Any], key: str, where: str, typ=str) -> Any:
    if key not in d:
        raise UsageError(f"study figures: {where}: missing {key!r}")
    if not isinstance(d[key], typ):
        raise UsageError(f"study figures: {where}: {key!r} must be {getattr(typ, '__name__', typ)}")
    return d[key]


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_shape(shape: Mapping[str, Any], where: str, has_note: bool) -> None:
    kind = _need(shape, "kind", where)
    if kind not in SHAPE_KINDS:
        raise UsageError(f"study figures: {where}: shape kind {kind!r}; choose from {', '.join(SHAPE_KINDS)}")
    if kind == "not_given":
        _need(shape, "why", where)
    elif kind == "relative_change":
        if "pct" in shape:
            if not _num(shape["pct"]):
                raise UsageError(f"study figures: {where}: pct must be a number")
        elif not (_num(shape.get("low")) and _num(shape.get("high")) and shape["low"] <= shape["high"]):
            raise UsageError(f"study figures: {where}: a relative change needs pct, or low <= high")
        if _num(shape.get("from_value")) and _num(shape.get("to_value")) and "pct" in shape and shape["from_value"]:
            implied = 100.0 * (shape["to_value"] - shape["from_value"]) / shape["from_value"]
            if abs(implied - shape["pct"]) > PCT_SLACK and not has_note:
                raise UsageError(f"study figures: {where}: pct {shape['pct']} but {shape['from_value']} → "
                                 f"{shape['to_value']} is {implied:.1f} %: add a note saying which is recorded")
    elif kind in ("absolute", "ratio"):
        if not (_num(shape.get("value")) or (_num(shape.get("low")) and _num(shape.get("high"))
                                             and shape["low"] <= shape["high"])):
            raise UsageError(f"study figures: {where}: {kind} needs value, or low <= high")
    elif kind == "occurs":
        _need(shape, "what", where)


def validate(data: Mapping[str, Any]) -> Figures:
    """The figures file as records; one clear UsageError line on anything malformed (pure)."""
    if not isinstance(data, Mapping) or data.get("kind") != "cnitrace-study-figures":
        raise UsageError("study figures: not a cnitrace-study-figures document")
    cit = _need(data, "citation", "document", Mapping)
    for k in CITATION_KEYS:
        if not str(_need(cit, k, "citation", (str, int))).strip():
            raise UsageError(f"study figures: citation: {k!r} is empty (write \"not given\" if the source has none)")
    fams = _need(data, "families", "document", Mapping)
    missing = [f for f in FAMILIES if f not in fams]
    if missing:
        raise UsageError(f"study figures: families missing: {', '.join(missing)}")
    out: list[Figure] = []
    seen: set[str] = set()
    meta: dict[str, dict[str, str]] = {}
    for fam in FAMILIES:
        fd = fams[fam]
        meta[fam] = {k: _need(fd, k, fam) for k in ("title", "study_setup", "finding")}
        figs = _need(fd, "figures", fam, list)
        if not figs:
            raise UsageError(f"study figures: {fam}: no figures (record \"not_given\" instead)")
        for i, f in enumerate(figs):
            where = f"{fam}[{i}]"
            fid = _need(f, "id", where)
            if fid in seen:
                raise UsageError(f"study figures: duplicate id {fid!r}")
            seen.add(fid)
            shape = _need(f, "shape", fid, Mapping)
            _check_shape(shape, fid, bool(f.get("note")))
            out.append(Figure(id=fid, family=fam, cni=_need(f, "cni", fid), metric=_need(f, "metric", fid),
                              stated=_need(f, "stated", fid), shape=dict(shape), cnis=tuple(f.get("cnis", ())),
                              note=f.get("note", ""), proxy=f.get("proxy", "")))
    return Figures(citation=dict(cit), families=meta, figures=tuple(out))


def load(text: str | None = None) -> Figures:
    """The packaged figures.json (or `text`), validated."""
    if text is None:
        text = resources.files("cnitrace.study").joinpath("figures.json").read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"study figures: not JSON: {exc}") from None
    return validate(data)
