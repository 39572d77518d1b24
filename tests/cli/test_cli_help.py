"""``--help`` works for the top level and for every (nested) subcommand of ``pftray``."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from pftray.cli import build_parser, main


def _command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path of the parser tree: (), ("run",), ("data", "prepare"), ..."""
    paths = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths += _command_paths(sub, (*prefix, name))
    return paths


PATHS = _command_paths(build_parser())


def test_the_walk_finds_the_nested_commands():
    names = {" ".join(p) for p in PATHS}
    expected = {"", "run", "pretrain", "data", "data prepare", "privacy", "privacy epsilon", "privacy noise",
                "eval", "report", "compare", "sweep", "audit", "config"}
    assert expected <= names, expected - names


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "<top>")
def test_help_exits_0_and_prints_usage(path, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*path, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {' '.join(('pftray', *path))}"), out[:200]


def test_top_level_help_lists_the_audit_command_in_a_subprocess():
    res = subprocess.run([sys.executable, "-m", "pftray", "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("usage: pftray")
    assert "TPR@1%FPR" in res.stdout and "Traceback" not in res.stderr
