"""Every input error exits 2 with one line on stderr naming the input; runtime failures exit 1 (pftray.errors)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pftray.cli import main
from pftray.errors import (
    EXIT_INPUT,
    EXIT_RUNTIME,
    ConfigError,
    InputError,
    RuntimeFailure,
    error_line,
    exit_code,
)

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = str(REPO / "configs" / "quickstart.yaml")
PRIVACY_OK = {"--sample-rate": "0.01", "--rounds": "10", "--delta": "1e-5"}


def _run(argv, capsys):
    """``pftray ARGV`` in this process: (exit code, stdout, stderr); argparse errors raise SystemExit."""
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def _assert_one_line_input_error(code, err, *needles):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def _privacy(what, **flags):
    args = {("--noise-multiplier" if what == "epsilon" else "--target-epsilon"): "1.0", **PRIVACY_OK}
    args.update({k.replace("_", "-"): v for k, v in flags.items()})
    return ["privacy", what, *[x for kv in args.items() for x in kv]]


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (_privacy("epsilon", **{"--noise_multiplier": "-1"}), "--noise-multiplier -1.0"),
        (_privacy("epsilon", **{"--noise_multiplier": "nan"}), "--noise-multiplier nan"),
        (_privacy("epsilon", **{"--sample_rate": "2"}), "--sample-rate 2.0"),
        (_privacy("epsilon", **{"--sample_rate": "0"}), "--sample-rate 0.0"),
        (_privacy("epsilon", **{"--rounds": "0"}), "--rounds 0"),
        (_privacy("noise", **{"--delta": "1"}), "--delta 1.0"),
        (_privacy("noise", **{"--target_epsilon": "-3"}), "--target-epsilon -3.0"),
    ],
)
def test_bad_privacy_values_exit_2_naming_the_flag(argv, flag, capsys):
    code, out, err = _run(argv, capsys)
    _assert_one_line_input_error(code, err, flag)
    assert out == ""


def test_good_privacy_values_still_print_json(capsys):
    code, out, err = _run(_privacy("epsilon"), capsys)
    assert code == 0, err
    assert '"epsilon"' in out


def test_argparse_errors_are_one_line_naming_the_flag(capsys):
    code, _, err = _run(_privacy("epsilon", **{"--noise_multiplier": "abc"}), capsys)
    _assert_one_line_input_error(code, err, "--noise-multiplier", "invalid float value: 'abc'")
    code, _, err = _run(["privacy", "epsilon", "--sample-rate", "0.1", "--rounds", "3"], capsys)
    _assert_one_line_input_error(code, err, "--noise-multiplier")
    code, _, err = _run(["no-such-command"], capsys)
    _assert_one_line_input_error(code, err, "no-such-command")


def test_missing_config_file_exits_2_naming_it(tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    for argv in (["config", str(missing)], ["run", str(missing), "--local"], ["pretrain", str(missing)]):
        code, _, err = _run(argv, capsys)
        _assert_one_line_input_error(code, err, str(missing), "cannot read config file")


def test_bad_set_key_and_value_exit_2_naming_the_key(capsys):
    code, _, err = _run(["config", QUICKSTART, "--set", "fed.nope=1"], capsys)
    _assert_one_line_input_error(code, err, "fed.nope: unknown key")
    code, _, err = _run(["config", QUICKSTART, "--set", "fed.rounds=0"], capsys)
    _assert_one_line_input_error(code, err, "fed.rounds: 0 is out of range")
    code, _, err = _run(["config", QUICKSTART, "--set", "fedrounds"], capsys)
    _assert_one_line_input_error(code, err, "'fedrounds': expected section.key=value")


def test_invalid_yaml_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("fed:\n  rounds: [1,\n  x: }\n")
    code, _, err = _run(["config", str(bad)], capsys)
    _assert_one_line_input_error(code, err, str(bad), "not valid YAML")


def test_the_console_entry_points_exit_2_with_one_line(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "pftray", "privacy", "epsilon", "--noise-multiplier", "-1", "--sample-rate", "0.01",
         "--rounds", "10"], capture_output=True, text=True, timeout=120)
    _assert_one_line_input_error(res.returncode, res.stderr, "--noise-multiplier -1.0")
    missing = tmp_path / "nope.yaml"
    res = subprocess.run([sys.executable, str(REPO / "sweeps" / "run_sweep.py"), str(missing)],
                         capture_output=True, text=True, timeout=120)
    _assert_one_line_input_error(res.returncode, res.stderr, str(missing), "cannot read sweep file")


def test_exit_code_mapping():
    assert exit_code(InputError("x")) == EXIT_INPUT == 2
    assert exit_code(ConfigError("fed.rounds: bad")) == 2
    assert exit_code(FileNotFoundError("x")) == 2
    assert exit_code(FileExistsError("x")) == 2
    assert exit_code(RuntimeFailure("x")) == EXIT_RUNTIME == 1
    assert exit_code(RuntimeError("x")) == 1
    assert exit_code(ValueError("x")) == 1  # an unexpected ValueError is a failure, not the user's input
    assert exit_code(KeyboardInterrupt()) == 130
    from pftray.data.types import DataError

    assert exit_code(DataError("shard.npz: bad")) == 2
    import pftray.config

    assert pftray.config.ConfigError is ConfigError and issubclass(ConfigError, ValueError)


def test_an_error_raised_inside_a_ray_actor_maps_by_its_cause():
    from ray.exceptions import RayTaskError

    wrapped = RayTaskError("Driver.run_rounds", "Traceback (most recent call last):\n  ...", ConfigError("a: b"))
    assert exit_code(wrapped) == 2
    assert error_line(wrapped) == "pftray: error: a: b"
    wrapped = RayTaskError("Driver.run_rounds", "Traceback ...", RuntimeError("disk\nfull"))
    assert exit_code(wrapped) == 1
    assert error_line(wrapped, "run") == "pftray: run failed: RuntimeError: disk full"
