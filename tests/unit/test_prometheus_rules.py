"""The recording rules: valid for promtool, their promtool unit tests pass, names follow
``messaging:<what>:<unit>`` (DESIGN.md) and every rule is tested."""

from __future__ import annotations

import re
import subprocess

from tests.prometheus_rules import (
    PROMETHEUS_DIR,
    RECORDING_RULES,
    RECORDING_RULES_TEST,
    promql_test_exprs,
    recording_rule_names,
)

NAME = re.compile(r"^messaging:[a-z0-9_]+:[a-z0-9_]+$")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=PROMETHEUS_DIR.parent, capture_output=True, text=True, timeout=120, check=False
    )


def test_promtool_check_rules(promtool: str) -> None:
    result = _run(promtool, "check", "rules", str(RECORDING_RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(recording_rule_names())} rules found" in result.stdout


def test_promtool_test_rules(promtool: str) -> None:
    result = _run(promtool, "test", "rules", str(RECORDING_RULES_TEST))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rule_names_follow_the_convention() -> None:
    names = recording_rule_names()
    assert names, f"no record: lines found in {RECORDING_RULES}"
    assert len(names) == len(set(names)), "duplicate recording rule names"
    assert [n for n in names if not NAME.match(n)] == []


def test_every_rule_has_a_test_case() -> None:
    exprs = promql_test_exprs()
    untested = [
        name
        for name in recording_rule_names()
        if not any(re.search(rf"(?<![\w:]){re.escape(name)}(?![\w:])", e) for e in exprs)
    ]
    assert untested == []
