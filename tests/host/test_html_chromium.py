"""The HTML report renders in headless Chromium with its charts drawn (a screenshot is checked)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from PIL import Image

from cnitrace.reports.profile.html import PALETTE, render_html
from tests.unit.test_report_document import make_doc

CHROMIUM = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _hex(c: str) -> tuple[int, int, int]:
    return tuple(int(c[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


def test_html_report_renders_with_charts(tmp_path: Path):
    page = tmp_path / "report.html"
    page.write_text(render_html(make_doc()))
    profile = tmp_path / "chrome-profile"
    shot = tmp_path / "shot.png"
    subprocess.run([*CHROMIUM, f"--user-data-dir={profile}", "--window-size=1100,900",
                    f"--screenshot={shot}", page.as_uri()], check=True, capture_output=True, timeout=120)
    dom = subprocess.run([*CHROMIUM, f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
                         check=True, capture_output=True, text=True, timeout=120).stdout
    assert 'id="stage-share-chart"' in dom and 'id="chain-chart"' in dom and "cali-pi-allow" in dom
    img = Image.open(shot).convert("RGB")
    colors = img.getcolors(maxcolors=1 << 20)
    counts = {rgb: n for n, rgb in colors}
    # The stage bar's first two stage colours are actually painted, as solid areas.
    assert counts.get(_hex(PALETTE[0]), 0) > 500, "first stage bar not drawn"
    assert counts.get(_hex(PALETTE[1]), 0) > 200, "second stage bar not drawn"
