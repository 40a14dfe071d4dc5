"""The `extender` command: every subcommand is registered and importable."""

from __future__ import annotations

import subprocess
import sys

import pytest

from extender.cli import SUBCOMMANDS, build_parser, main


def test_every_subcommand_builds_its_parser() -> None:
    parser = build_parser()  # imports every subcommand module
    help_text = parser.format_help()
    for name in SUBCOMMANDS:
        assert name in help_text


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_subcommand_help_exits_zero(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main([name, "--help"])
    assert done.value.code == 0
    assert f"extender {name}" in capsys.readouterr().out


def test_console_script_reports_config_errors_with_exit_2() -> None:
    result = subprocess.run([sys.executable, "-m", "extender.cli", "check-config", "/nonexistent.yaml"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "extender check-config: /nonexistent.yaml: cannot read" in result.stderr
