"""The study's self-contained HTML report: a section per experiment family (id="family-<id>"),
each row's measured figures, the study's shape beside the one here, and the attributed stage;
inline CSS, no scripts, no network fetches (the profile and sweep reports' pattern)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import jinja2

from cnitrace.reports.study.terminal import agree_text, fmt_value, measured_text


def render_study_html(doc: Mapping[str, Any]) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(Path(__file__).parent)),
                             autoescape=jinja2.select_autoescape(["html", "j2"]))
    env.filters["value"] = fmt_value
    env.filters["agree"] = agree_text
    env.filters["measured"] = measured_text
    return env.get_template("study.html.j2").render(doc=doc)
