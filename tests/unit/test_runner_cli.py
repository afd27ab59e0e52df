"""The runner seam and the CLI's single error boundary."""

from __future__ import annotations

import pytest

from cnitrace import cli
from cnitrace.core.errors import ExitStatus, ToolError, UsageError
from cnitrace.core.runner import Completed, RecordedRunner, Runner


def test_runner_rejects_non_string_argv():
    with pytest.raises(TypeError):
        Runner().run(["echo", 1])  # type: ignore[list-item]


def test_runner_missing_tool_is_one_line():
    with pytest.raises(ToolError) as e:
        Runner().run(["cnit-no-such-tool-xyz"])
    assert "not installed" in e.value.message and "\n" not in e.value.message


def test_runner_failure_carries_last_stderr_line():
    with pytest.raises(ToolError) as e:
        Runner().run(["sh", "-c", "echo one >&2; echo two >&2; exit 3"])
    assert e.value.message.endswith("two")
    assert Runner().run(["sh", "-c", "exit 3"], check=False).returncode == 3


def test_runner_netns_prefix_and_recorded_replay():
    r = RecordedRunner({("ip", "netns", "exec", "n1", "nft", "list", "ruleset"): "table ip t {}\n"})
    out = r.run(["nft", "list", "ruleset"], netns="n1")
    assert out.stdout.startswith("table") and r.calls == [("ip", "netns", "exec", "n1", "nft", "list", "ruleset")]
    with pytest.raises(ToolError):
        r.run(["nft", "list", "tables"])
    bad = RecordedRunner({("x",): Completed(("x",), 1, "", "nope")})
    with pytest.raises(ToolError):
        bad.run(["x"])


def test_cli_bad_option_is_one_line_exit_2(capsys):
    assert cli.main(["doctor", "--no-such-option"]) == ExitStatus.USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no-such-option" in err[0]


def test_cli_unknown_command_exit_2(capsys):
    assert cli.main(["frobnicate"]) == ExitStatus.USAGE
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_cli_domain_error_is_one_line(monkeypatch, capsys):
    @cli.cli.command("cnit-test-raise")
    def _raise():
        raise UsageError("no interface matches 'cali*'; have: eth0, lo\nsecond line hidden")

    try:
        assert cli.main(["cnit-test-raise"]) == ExitStatus.USAGE
        err = capsys.readouterr().err
        assert err == "cnitrace: no interface matches 'cali*'; have: eth0, lo\n"
    finally:
        cli.cli.commands.pop("cnit-test-raise")


def test_cli_keyboard_interrupt_is_130(capsys):
    @cli.cli.command("cnit-test-int")
    def _int():
        raise KeyboardInterrupt

    try:
        assert cli.main(["cnit-test-int"]) == ExitStatus.INTERRUPTED
    finally:
        cli.cli.commands.pop("cnit-test-int")


def test_cleanup_needs_root(monkeypatch, capsys):
    monkeypatch.setattr(cli.os, "geteuid", lambda: 1000)
    assert cli.main(["cleanup"]) == ExitStatus.FAILURE
    assert "root" in capsys.readouterr().err
