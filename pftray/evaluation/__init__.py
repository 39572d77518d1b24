"""Evaluation of finished runs: ``pftray eval`` (metrics + samples), ``pftray report`` (plots + one HTML page)
and ``pftray compare`` (methods with confidence intervals and paired tests). Heavy imports stay inside the
functions, so registering the subcommands costs nothing."""

from pftray.evaluation.compare import add_compare_parser, compare
from pftray.evaluation.report import add_report_parser, make_report
from pftray.evaluation.run_eval import add_eval_parser, evaluate_run
from pftray.evaluation.stats import paired_tests, t_interval

__all__ = [
    "add_compare_parser",
    "add_eval_parser",
    "add_report_parser",
    "compare",
    "evaluate_run",
    "make_report",
    "paired_tests",
    "t_interval",
]
