"""The errors pftray raises for its users, and the exit code of each.

=====================  ====  ==========================================================================
exception              exit  meaning
=====================  ====  ==========================================================================
:class:`InputError`       2  bad input from the user: a flag, a path, a file (the message names it)
:class:`ConfigError`      2  a bad configuration value (an :class:`InputError`; names the key path)
:class:`RuntimeFailure`   1  something failed while running (the message says what and where)
any other exception       1  an unexpected failure, reported the same way as a runtime failure
=====================  ====  ==========================================================================

The other modules subclass these, e.g. :class:`pftray.data.types.DataError` (bad data on disk),
:class:`pftray.runtime.ray_pool.TierError` (a tier asks for resources the cluster does not have) and
:class:`pftray.faces.FaceModelsMissing` are input errors; :class:`pftray.fed.server.RunError` is a runtime
failure. ``FileNotFoundError`` and ``FileExistsError`` (a named path that is missing or already taken) are input
errors as well. Every entry point (``pftray``, ``sweeps/run_sweep.py``) maps them through :func:`exit_code`. The
command line prints every error as **one line** on stderr, ``pftray: error: <message>``, never a traceback (set
``PFTRAY_DEBUG=1`` to re-raise it).

This module imports nothing heavy, so every layer (config, evaluation, sweeps, the CLI) can import it.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_INPUT = 2
EXIT_INTERRUPTED = 130


class PftrayError(Exception):
    """Base of pftray's own errors; ``exit_code`` is what the command line exits with."""

    exit_code = EXIT_RUNTIME


class InputError(PftrayError, ValueError):
    """Bad input from the user (a flag, a path, a file): exit code 2. The message names the input."""

    exit_code = EXIT_INPUT


class ConfigError(InputError):
    """A bad configuration value: the message names the key path, the value and what is allowed (exit 2)."""


class RuntimeFailure(PftrayError, RuntimeError):
    """A failure while running (training, evaluation, a sweep): exit code 1."""

    exit_code = EXIT_RUNTIME


def root_cause(exc: BaseException) -> BaseException:
    """The user's exception inside a wrapper: Ray re-raises an actor's error as ``RayTaskError`` with the
    original as ``cause``."""
    seen = 0
    while seen < 8 and isinstance(getattr(exc, "cause", None), BaseException) and type(exc).__module__.startswith(
        "ray."
    ):
        exc = exc.cause
        seen += 1
    return exc


def exit_code(exc: BaseException) -> int:
    """The exit code for ``exc``: 2 for input errors, 130 for Ctrl-C, 1 for everything else."""
    exc = root_cause(exc)
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, PftrayError):
        return exc.exit_code
    if isinstance(exc, (FileNotFoundError, FileExistsError)):
        return EXIT_INPUT
    return EXIT_RUNTIME


def one_line(text: str) -> str:
    """``text`` on one line: its lines joined with ' ', blank lines dropped."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def error_line(exc: BaseException, command: str = "") -> str:
    """The line the command line prints for ``exc`` (without the trailing newline)."""
    exc = root_cause(exc)
    if exit_code(exc) == EXIT_INPUT:
        return f"pftray: error: {one_line(str(exc))}"
    what = f"{command} failed" if command else "failed"
    message = one_line(str(exc)) or "(no message)"
    return f"pftray: {what}: {type(exc).__name__}: {message}"
