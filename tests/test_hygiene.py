"""Fresh-clone hygiene, checked mechanically over every tracked file:

* no absolute path of a developer's machine (a notes folder, a venv, a home directory) is named anywhere;
* no subprocess is started by a bare command name (``python``, ``ray``, ``pftray``...), which resolves against
  whatever PATH the caller happens to have: use ``sys.executable`` or the venv's own ``bin/``.

Each rule is also tested against a planted violation, so that a regex that matches nothing fails here.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: absolute paths that only exist on some machine: homes, notes/venv folders under /work, /opt (a cluster's shared
#: mount such as /mnt/shared in cluster.yaml is the cluster's documented layout, not a developer's machine)
MACHINE_PATH = re.compile(r"(?<![\w.$/-])/(?:work|root|home|Users|opt|scratch)/[\w.-]+")
#: a subprocess whose program is a bare name found on PATH
BARE_COMMAND = re.compile(
    r"(?:subprocess\.(?:run|Popen|call|check_call|check_output)|os\.system|os\.exec\w+)\(\s*\[?\s*"
    r"[\"'](?:python3?|ray|pftray|pytest|pip3?|ruff|flwr)[\"'\s]"
)
TEXT_SUFFIXES = {".py", ".sh", ".md", ".yaml", ".yml", ".toml", ".txt", ".cfg", ".ini", ".json", ""}


def _tracked() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    files = [REPO / p for p in out.decode().split("\0") if p]
    return [f for f in files if f.is_file() and f.suffix in TEXT_SUFFIXES and f.stat().st_size < 2_000_000]


def _violations(pattern: re.Pattern[str], files: list[Path]) -> list[str]:
    bad = []
    for f in files:
        if f.resolve() == Path(__file__).resolve():
            continue  # this file names the patterns it looks for
        try:
            text = f.read_text()
        except UnicodeDecodeError:
            continue
        for i, line in enumerate(text.splitlines(), 1):
            if pattern.search(line):
                bad.append(f"{f.relative_to(REPO)}:{i}: {line.strip()[:120]}")
    return bad


def test_the_patterns_catch_planted_violations():
    assert MACHINE_PATH.search('TINY = "/work/notes/tiny.yaml"')
    assert MACHINE_PATH.search("default /root/.cache/x")
    assert MACHINE_PATH.search("see /home/alice/venv/bin/python")
    assert not MACHINE_PATH.search("https://example.org/home/page and $OUT/work/x and ./work/y")
    assert BARE_COMMAND.search('subprocess.run(["ray", "start", "--head"])')
    assert BARE_COMMAND.search("subprocess.Popen(['python', '-m', 'x'])")
    assert BARE_COMMAND.search('os.system("pftray run x")')
    assert not BARE_COMMAND.search("subprocess.run([sys.executable, '-m', 'pftray'])")
    assert not BARE_COMMAND.search('subprocess.run(["git", "ls-files"])')


def test_no_tracked_file_names_an_absolute_path_of_a_machine():
    bad = _violations(MACHINE_PATH, _tracked())
    assert not bad, "machine-specific absolute paths (use paths under the repository or an env var):\n" + "\n".join(bad)


def test_no_subprocess_starts_a_bare_command_name():
    bad = _violations(BARE_COMMAND, [f for f in _tracked() if f.suffix == ".py"])
    assert not bad, "subprocesses started by a bare name (use sys.executable or the venv's bin/):\n" + "\n".join(bad)


def test_ci_runs_the_readme_test_command_in_a_bare_environment():
    ci = (REPO / ".ci" / "run").read_text()
    assert "env -i" in ci and "PATH=/usr/local/bin:/usr/bin:/bin" in ci and "scripts/test.sh" in ci
    assert "bash scripts/test.sh" in (REPO / "README.md").read_text()
