"""What every entry point shares (``pftray``, ``sweeps/run_sweep.py``, ``python -m bench``): a parser whose usage
errors are one line with exit 2, and :func:`dispatch`, which runs the chosen command and turns every error into
one line on stderr and its exit code (:mod:`pftray.errors`; ``PFTRAY_DEBUG=1`` re-raises instead).

It sits below :mod:`pftray.cli` and the subcommand modules, so that those can use it without importing the CLI.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from pftray.errors import EXIT_INPUT, EXIT_INTERRUPTED, error_line, exit_code

__all__ = ["QUIET_IN_WORKERS", "ArgParser", "dispatch", "quiet_library_warnings"]


class ArgParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line naming the flag (exit 2), like every input error."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_INPUT, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


#: library warnings that every process hosting a model repeats (peft warns when the second of our two adapters,
#: shared and identity, is added: that is the design): never shown by Ray's processes, whose output reaches the
#: console asynchronously, after the run's summary
QUIET_IN_WORKERS = ("Already found a `peft_config` attribute in the model",)


def quiet_library_warnings() -> None:
    """Each library warning at most once in this process (by message, wherever it is raised), and those of
    :data:`QUIET_IN_WORKERS` not at all in the processes Ray starts from this one (``PYTHONWARNINGS`` is how the
    filter reaches them: a local Ray instance starts its workers with this environment)."""
    warnings.filterwarnings("once", category=UserWarning)
    have = [w for w in os.environ.get("PYTHONWARNINGS", "").split(",") if w]
    want = [f"ignore:{m}" for m in QUIET_IN_WORKERS]
    os.environ["PYTHONWARNINGS"] = ",".join(have + [w for w in want if w not in have])


def dispatch(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command; every error becomes one line on stderr and its exit code."""
    args = parser.parse_args(argv)
    command = getattr(args, "command", "")
    quiet_library_warnings()
    try:
        return int(args.fn(args) or 0)
    except KeyboardInterrupt:
        print("pftray: interrupted; the run directory keeps everything up to the last checkpoint "
              "(resume with `pftray run --resume DIR`)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the CLI's contract: one clear line, exit 2 or 1
        code = exit_code(exc)
        line = error_line(exc, command)
        if code != EXIT_INPUT and command == "run":
            line += ("" if line.endswith(".") else ".") + " Partial results (tables, checkpoints) are in the run directory; resume with --resume DIR."
        print(line, file=sys.stderr)
        if "PFTRAY_DEBUG" in os.environ:
            raise
        return code
