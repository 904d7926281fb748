"""The recording rules file and its promtool tests, read without a YAML library."""

from __future__ import annotations

import re
from pathlib import Path

PROMETHEUS_DIR = Path(__file__).resolve().parents[1] / "prometheus"
RECORDING_RULES = PROMETHEUS_DIR / "recording_rules.yml"
RECORDING_RULES_TEST = PROMETHEUS_DIR / "tests" / "recording_rules_test.yml"

_RECORD = re.compile(r"""^\s*(?:-\s*)?record:\s*["']?([^\s"'#]+)""", re.MULTILINE)
_EXPR = re.compile(r"""^\s*(?:-\s*)?expr:\s*["']?([^"'#\n]+)""", re.MULTILINE)


def recording_rule_names(path: Path = RECORDING_RULES) -> list[str]:
    """The ``record:`` names, in file order."""
    return _RECORD.findall(path.read_text())


def promql_test_exprs(path: Path = RECORDING_RULES_TEST) -> list[str]:
    """The one-line ``expr:`` of every promql_expr_test (stripped)."""
    return [expr.strip() for expr in _EXPR.findall(path.read_text())]
