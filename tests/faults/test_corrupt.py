"""Damaged files: the state file, the calibration cache, the microVM's cached initramfs and a lab's
description, each truncated or garbage. Each gives at most one clear line (never a traceback) and
is rebuilt or ignored safely; the node is left as it was found.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from tests.faults.matrix import RULES, picture, row, tokens_of, wait_clean

pytestmark = pytest.mark.requires("iptables")

GARBAGE = os.urandom(1500) + b"\0\n\xff{\"op\": \"add\", \"id\": \n" + os.urandom(200)


def lab_name() -> str:
    return f"fc{uuid.uuid4().hex[:6]}"


def warnings_of(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def assert_clean_lines(p, *, most: int = 1, rc: int | None = 0) -> None:
    """No traceback, at most `most` lines on stderr (cnitrace's own `·` progress lines aside)."""
    assert "Traceback" not in p.stderr, p.stderr
    lines = [line for line in warnings_of(p.stderr) if not line.startswith(("·", "  "))]
    assert len(lines) <= most, p.stderr
    if rc is not None:
        assert p.returncode == rc, p.stderr


# --- the state file -------------------------------------------------------------------------------

def test_state_file_torn_mid_record(priv):
    """A record cut mid-line (the next append must not be swallowed by it): a second lab builds and
    `cleanup --all` removes both, the first's unrecorded server too (its namespace's remover)."""
    with row("corrupt", "state.jsonl", "truncated") as out:
        before = picture(priv)
        a, b = lab_name(), lab_name()
        assert priv.cli("lab", "up", "-d", "calico", "-n", RULES, "--name", a).returncode == 0
        state = priv.state / "state.jsonl"
        text = state.read_bytes()
        cut = text.rstrip(b"\n").rfind(b"\n", 0, len(text) - 1)          # into the last-but-one line
        cut = text.rfind(b"\n", 0, cut) + 40
        state.write_bytes(text[:cut])
        up = priv.cli("lab", "up", "-d", "calico", "-n", RULES, "--name", b)
        assert_clean_lines(up, most=1)
        assert any(r.name.endswith(f"cnit-{b}.json") for r in _live(priv)), "the record after the torn line was lost"
        tokens = tokens_of(priv.state, f"cnit-{a}", f"cnit-{b}")
        c = priv.cli("cleanup", "--all")
        assert_clean_lines(c, most=1)
        out.residue, out.foreign = wait_clean(before, tokens, priv)
        assert not out.residue, out.explain()


def test_state_file_garbage(priv):
    """Random bytes: one warning line, nothing to clean, the file rebuilt (gone: no live record left);
    a lab then builds and comes down in the same directory."""
    with row("corrupt", "state.jsonl", "garbage") as out:
        before = picture(priv)
        priv.state.mkdir(parents=True, exist_ok=True)
        (priv.state / "state.jsonl").write_bytes(GARBAGE)
        c = priv.cli("cleanup")
        assert_clean_lines(c, most=1)
        assert "unreadable line" in c.stderr and "nothing to clean up" in c.stdout, (c.stdout, c.stderr)
        assert not (priv.state / "state.jsonl").exists()
        name = lab_name()
        assert priv.cli("lab", "up", "-d", "calico", "-n", RULES, "--name", name).returncode == 0
        assert priv.cli("lab", "down", "--name", name).returncode == 0
        out.residue, out.foreign = wait_clean(before, {f"cnit-{name}"}, priv)
        assert not out.residue, out.explain()


def test_state_file_garbage_between_records(priv):
    """Garbage lines and records of the wrong shape between good records: the good ones are all
    removed by `cleanup --all`, with one line per kind of damage."""
    with row("corrupt", "state.jsonl", "bad lines, records") as out:
        before = picture(priv)
        name = lab_name()
        assert priv.cli("lab", "up", "-d", "kube-router", "-n", RULES, "--name", name).returncode == 0
        state = priv.state / "state.jsonl"
        lines = state.read_bytes().splitlines(keepends=True)
        bad = [GARBAGE.replace(b"\n", b" ") + b"\n",
               json.dumps({"op": "add", "id": ["x"], "owner": "lab:zz", "kind": "netns", "name": "n"}).encode() + b"\n",
               json.dumps({"op": "add", "id": "y", "owner": "lab:zz", "kind": "netns", "name": "cnit-zz",
                           "data": [], "created": "yesterday"}).encode() + b"\n",
               b"[1, 2, 3]\n"]
        state.write_bytes(b"".join(lines[:2] + bad + lines[2:]))
        tokens = tokens_of(priv.state, f"cnit-{name}")
        c = priv.cli("cleanup", "--all")
        assert_clean_lines(c, most=2)
        assert "unreadable line" in c.stderr and "malformed record" in c.stderr, c.stderr
        out.residue, out.foreign = wait_clean(before, tokens, priv)
        assert not out.residue, out.explain()


def _live(priv):
    from cnitrace.core.state import StateFile
    return StateFile(priv.state).live()


# --- the calibration cache --------------------------------------------------------------------------

CALIBRATE = ("from cnitrace.node import checks\n"
             "from cnitrace.calibrate import rules\n"
             "checks.register_all()\n"
             "s = rules.cached_or_measure_shapes(backend='legacy', nft=False, repeats=1, packets=200)\n"
             "print(s.provenance)\n")


@pytest.mark.requires("tracepoints", "bcc")
@pytest.mark.parametrize("damage", ["truncated", "garbage", "damaged entry"])
def test_calibration_cache(priv, damage):
    with row("corrupt", "calibration.json", damage) as out:
        cache = priv.cache / "calibration.json"
        good = json.dumps({"other-key": {"x": 1}, "shapes-v0|old": {"y": 2}}, indent=1)
        if damage == "truncated":
            cache.write_text(good[: len(good) // 2])
        elif damage == "garbage":
            cache.write_bytes(GARBAGE)
        else:
            from cnitrace.calibrate import rules
            import platform
            key = f"shapes-v{rules.SHAPES_CACHE_VERSION}|{platform.release()}|{rules.cpu_model()}|legacy"
            cache.write_text(json.dumps({key: "not an entry"}))
        before = picture(priv)
        r = priv.python(CALIBRATE)
        assert_clean_lines(r, most=0 if damage == "damaged entry" else 1)
        assert r.stdout.split() == ["measured"], r.stdout
        if damage != "damaged entry":
            assert "calibration cache" in r.stderr and "measuring again" in r.stderr, r.stderr
        rebuilt = json.loads(cache.read_text())
        assert any(k.startswith("shapes-v") and isinstance(v, dict) for k, v in rebuilt.items()), rebuilt
        again = priv.python(CALIBRATE)                       # the rebuilt cache is read back
        assert again.returncode == 0 and again.stdout.split() == ["cached"] and not again.stderr, again.stderr
        out.residue, out.foreign = wait_clean(before, {"cnit-cal"}, priv)
        assert not out.residue, out.explain()


# --- the microVM's cached initramfs ------------------------------------------------------------------

BUILD = ("from cnitrace.vagrant import microvm\n"
         "print(microvm.base_initramfs(microvm.resolve_kernel(None)))\n")


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_microvm_cache(priv, damage):
    from cnitrace.vagrant import microvm

    with row("corrupt", "microvm initramfs", damage):
        first = priv.python(BUILD)
        assert first.returncode == 0 and not first.stderr, first.stderr
        image = Path(first.stdout.strip())
        assert image.parent == priv.cache / "microvm", image     # CNITRACE_CACHE_DIR is honoured
        data = image.read_bytes()
        image.write_bytes(data[: len(data) // 3] if damage == "truncated" else os.urandom(len(data)))
        r = priv.python(BUILD)
        assert_clean_lines(r, most=1)
        assert "damaged" in r.stderr and Path(r.stdout.strip()) == image, r.stderr
        assert image.read_bytes() == data                         # rebuilt, identical
        again = priv.python(BUILD)
        assert again.returncode == 0 and not again.stderr
        assert microvm.newc_complete(data[:6], data[-1024:])


def test_microvm_boots_after_a_damaged_cache(priv):
    """End to end: a truncated cached image is rebuilt and the VM boots and runs the command."""
    with row("corrupt", "microvm initramfs", "truncated, then boot") as out:
        first = priv.python(BUILD)
        image = Path(first.stdout.strip())
        image.write_bytes(image.read_bytes()[:4096])
        before = picture(priv)
        r = priv.python("import sys; from cnitrace.vagrant import microvm\n"
                        "sys.exit(microvm.main(['--timeout', '240', '--', 'true']))", timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        assert "Traceback" not in r.stderr and "damaged" in r.stderr
        out.residue, out.foreign = wait_clean(before, {"cnit-microvm"}, priv)
        assert not out.residue, out.explain()


# --- a lab's description ---------------------------------------------------------------------------

DESCRIPTIONS = {
    "truncated": None,                        # the real description cut in half
    "garbage": GARBAGE,
    "wrong shape": json.dumps({"spec": "calico", "topology": [], "ground_truth": 1}).encode(),
    "a list": b"[]",
}


@pytest.mark.parametrize("damage", list(DESCRIPTIONS))
def test_lab_description(priv, damage):
    """status and profile refuse with one line naming the remedy; up refuses the name; list still
    lists it; `lab down` removes the lab and the description."""
    with row("corrupt", "labs/cnit-NAME.json", damage) as out:
        before = picture(priv)
        name = lab_name()
        assert priv.cli("lab", "up", "-d", "calico", "-n", RULES, "--name", name).returncode == 0
        desc = priv.state / "labs" / f"cnit-{name}.json"
        text = desc.read_bytes()
        desc.write_bytes(DESCRIPTIONS[damage] or text[: len(text) // 2])
        st = priv.cli("lab", "status", "--name", name)
        assert_clean_lines(st, rc=1)
        assert "unreadable lab description" in st.stderr and "lab down" in st.stderr, st.stderr
        if damage == "garbage":            # the other readers go through the same load()
            prof = priv.cli("profile", "--lab", name, "--duration", "1", "--no-calibrate")
            assert_clean_lines(prof, rc=1)
            assert "unreadable lab description" in prof.stderr, prof.stderr
            up = priv.cli("lab", "up", "-d", "calico", "-n", RULES, "--name", name)
            assert_clean_lines(up, rc=2)
            assert "already exists" in up.stderr
            assert name in priv.cli("lab", "list").stdout.split()
        down = priv.cli("lab", "down", "--name", name)
        assert_clean_lines(down, most=0)
        assert not desc.exists() and name not in priv.cli("lab", "list").stdout.split()
        out.residue, out.foreign = wait_clean(before, {f"cnit-{name}"}, priv)
        assert not out.residue, out.explain()


def test_lab_description_without_records(priv):
    """A description whose records were lost (a damaged state file): `lab down` removes it."""
    with row("corrupt", "labs/cnit-NAME.json", "no records left") as out:
        before = picture(priv)
        name = lab_name()
        (priv.state / "labs").mkdir(parents=True, exist_ok=True)
        (priv.state / "labs" / f"cnit-{name}.json").write_bytes(GARBAGE)
        down = priv.cli("lab", "down", "--name", name)
        assert_clean_lines(down, most=0)
        assert name not in priv.cli("lab", "list").stdout.split()
        out.residue, out.foreign = wait_clean(before, {f"cnit-{name}"}, priv)
        assert not out.residue, out.explain()
