"""The alert rules and the Prometheus/Alertmanager configs: rendered from one source,
valid for promtool and amtool, tested by promtool, documented in docs/runbooks.md."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from deploy import prometheus_rules as rules
from tests.prometheus_rules import PROMETHEUS_DIR, RECORDING_RULES, recording_rule_names

ROOT = PROMETHEUS_DIR.parent
ALERT_RULES_TEST = PROMETHEUS_DIR / "tests" / "alert_rules_test.yml"
RUNBOOKS = ROOT / "docs" / "runbooks.md"
METRICS_DOC = ROOT / "docs" / "metrics.md"
REQUIRED_ALERTS = {
    "MessagingSpamReportsHigh", "MessagingReplyRateDrop", "MessagingFirstReplyLatencyHigh",
    "MessagingInMailResponseRateLow", "MessagingFlaggedSendersSurge", "MessagingBlocksSurge",
    "MessagingPipelineStalled", "MessagingWorkerDown", "MessagingInvalidEventsHigh",
    "MessagingConsumerLagHigh", "MessagingKafkaUnreachable", "MessagingInMailResponseBelowPolicy",
    "MessagingHistoryStalled",
}


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], cwd=ROOT, capture_output=True, text=True, timeout=120,
        check=False,
    )


def _rules(text: str) -> list[dict]:
    return [rule for group in yaml.safe_load(text)["groups"] for rule in group["rules"]]


# --- the committed files are the production renders ------------------------------------------
@pytest.mark.parametrize("path", sorted(rules.production_files(), key=str), ids=lambda p: p.name)
def test_committed_file_equals_its_render(path: Path) -> None:
    assert path.read_text() == rules.production_files()[path], (
        f"{path.name} is out of date: run .venv/bin/python -m deploy.prometheus_rules"
    )


def test_thresholds_file_has_a_value_unit_and_reason_for_each_threshold() -> None:
    data = rules.load_threshold_file()
    values = rules.load_thresholds()
    used = {spec.threshold for spec in rules.ALERTS if spec.threshold}
    assert used == set(values), "thresholds.yml and the alert definitions disagree"
    for section in ("units", "reasons"):
        assert set(data[section]) == set(values), section
        assert all(str(text).strip() and text != "TBD" for text in data[section].values())


# --- promtool and amtool ---------------------------------------------------------------------
def test_promtool_check_rules(promtool: str) -> None:
    result = _run(promtool, "check", "rules", RECORDING_RULES, rules.ALERT_RULES_PATH)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules.ALERTS)} rules found" in result.stdout


def test_promtool_alert_tests_pass(promtool: str) -> None:
    result = _run(promtool, "test", "rules", ALERT_RULES_TEST)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    cases = [check for group in yaml.safe_load(ALERT_RULES_TEST.read_text())["tests"]
             for check in group["alert_rule_test"]]
    for alert in REQUIRED_ALERTS:
        mine = [c for c in cases if c["alertname"] == alert]
        assert any(not c.get("exp_alerts") for c in mine), f"{alert}: no case where it is silent"
        fired = {a["exp_labels"]["severity"] for c in mine for a in c.get("exp_alerts") or []}
        expected = {spec.severity for spec in rules.ALERTS if spec.alert == alert}
        assert fired == expected, f"{alert}: fires with {fired} in the tests, not {expected}"


def test_promtool_check_config(promtool: str) -> None:
    result = _run(promtool, "check", "config", rules.PROMETHEUS_CONFIG_PATH)
    assert result.returncode == 0, result.stdout + result.stderr


def test_amtool_check_config(amtool: str) -> None:
    result = _run(amtool, "check-config", rules.ALERTMANAGER_CONFIG_PATH)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compressed_render_and_rendered_configs_are_valid(
    promtool: str, amtool: str, tmp_path: Path
) -> None:
    (tmp_path / "recording_rules.yml").write_text(RECORDING_RULES.read_text())
    (tmp_path / "alert_rules.yml").write_text(
        rules.render_alert_rules("24m", 0.05, range_scale=0.05))
    config = tmp_path / "prometheus.yml"
    config.write_text(rules.render_prometheus_config(
        ["127.0.0.1:6066", "127.0.0.1:6067"], "127.0.0.1:9093",
        ["recording_rules.yml", "alert_rules.yml"], "1s"))
    result = _run(promtool, "check", "config", config)
    assert result.returncode == 0, result.stdout + result.stderr
    alertmanager = tmp_path / "alertmanager.yml"
    alertmanager.write_text(rules.render_alertmanager_config(
        "http://127.0.0.1:18080/hook", group_wait="1s", group_interval="2s",
        repeat_interval="1m"))
    result = _run(amtool, "check-config", alertmanager)
    assert result.returncode == 0, result.stdout + result.stderr


# --- what every alert carries ------------------------------------------------------------------
def test_every_required_alert_exists_with_severity_annotations_and_for() -> None:
    parsed = _rules(rules.ALERT_RULES_PATH.read_text())
    assert {rule["alert"] for rule in parsed} == REQUIRED_ALERTS
    for rule in parsed:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rules.parse_duration(rule["for"]) > 0, rule["alert"]
        annotations = rule["annotations"]
        assert set(annotations) >= {"summary", "description", "runbook_url"}, rule["alert"]
        assert "$value" in annotations["description"], rule["alert"]  # quotes the value
        assert annotations["runbook_url"] == (
            f"{rules.RUNBOOK_BASE}#{rule['alert'].lower()}"
        )
    spam = [r["labels"]["severity"] for r in parsed if r["alert"] == "MessagingSpamReportsHigh"]
    assert sorted(spam) == ["critical", "warning"]


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", markdown, re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def test_every_runbook_anchor_exists() -> None:
    anchors = _anchors(RUNBOOKS.read_text())
    missing = sorted({
        spec.runbook_url.split("#", 1)[1] for spec in rules.ALERTS
    } - anchors)
    assert not missing, f"no section in docs/runbooks.md for: {missing}"


def test_runbooks_list_every_threshold_with_its_value() -> None:
    text = RUNBOOKS.read_text()
    for name, value in rules.load_thresholds().items():
        rows = [line for line in text.splitlines()
                if line.startswith("|") and f"`{name}`" in line]
        assert rows, f"{name} missing from the thresholds table of docs/runbooks.md"
        cell = re.compile(rf"\|\s*{re.escape(rules.format_number(value))}\s*\|")
        assert any(cell.search(row) for row in rows), (
            f"{name}: the table does not show the value {value}"
        )


def test_alerts_use_only_known_recording_rules_and_metric_docs_name_them() -> None:
    known = set(recording_rule_names())
    used = set(re.findall(r"messaging:[a-z0-9_]+:[a-z0-9_]+", rules.ALERT_RULES_PATH.read_text()))
    assert used and used <= known
    doc = METRICS_DOC.read_text()
    unmentioned = sorted(name for name in REQUIRED_ALERTS if name not in doc)
    assert not unmentioned, f"docs/metrics.md's alert column never names {unmentioned}"


# --- the render parameters -----------------------------------------------------------------------
def test_production_render_is_the_default() -> None:
    assert rules.render_alert_rules() == rules.render_alert_rules("1d", 1.0)
    text = rules.render_alert_rules()
    assert "offset 1d" in text and "Compressed-time" not in text


WALL_CLOCK = {"MessagingPipelineStalled", "MessagingHistoryStalled", "MessagingWorkerDown",
              "MessagingKafkaUnreachable", "MessagingConsumerLagHigh"}


def test_the_pipeline_health_rules_and_only_they_run_on_the_wall_clock() -> None:
    assert {spec.alert for spec in rules.ALERTS if spec.wall_clock} == WALL_CLOCK


@pytest.mark.parametrize("scale", ["for_scale", "wall_scale"])
def test_a_for_scale_shrinks_the_for_of_its_own_rules_and_nothing_else(scale: str) -> None:
    production = _rules(rules.render_alert_rules())
    scaled = _rules(rules.render_alert_rules(**{scale: 0.05}))
    assert len(scaled) == len(production)
    for before, after in zip(production, scaled):
        own = (before["alert"] in WALL_CLOCK) == (scale == "wall_scale")
        factor = 0.05 if own else 1
        expected = max(1, round(rules.parse_duration(before["for"]) * factor))
        assert rules.parse_duration(after["for"]) == expected, before["alert"]
        if scale == "for_scale" or not own:
            assert after["expr"] == before["expr"]
        assert after["labels"] == before["labels"]
    by_name = {(r["alert"], r["labels"]["severity"]): r for r in scaled}
    if scale == "for_scale":
        assert by_name[("MessagingBlocksSurge", "warning")]["for"] == "30s"  # 10m x 0.05
        assert by_name[("MessagingPipelineStalled", "critical")]["for"] == "5m"
    else:
        assert by_name[("MessagingPipelineStalled", "critical")]["for"] == "15s"  # 5m x 0.05
        assert "[15s]" in by_name[("MessagingPipelineStalled", "critical")]["expr"]
        assert by_name[("MessagingBlocksSurge", "warning")]["for"] == "10m"


def test_baseline_offset_replaces_every_offset() -> None:
    production = _rules(rules.render_alert_rules())
    demo = _rules(rules.render_alert_rules(baseline_offset="24m"))
    relative = [r for r in production if "offset" in r["expr"]]
    assert {r["alert"] for r in relative} == {
        "MessagingReplyRateDrop", "MessagingInMailResponseRateLow",
        "MessagingFirstReplyLatencyHigh",
    }
    for before, after in zip(production, demo):
        assert after["expr"] == before["expr"].replace("offset 1d", "offset 24m")
        assert after["for"] == before["for"]
        assert "offset 1d" not in after["annotations"]["description"]


def test_range_scale_and_thresholds_override() -> None:
    scaled = _rules(rules.render_alert_rules(range_scale=0.1))
    for rule in scaled:  # 5m ranges -> 30s, but not the pipeline health's (wall time)
        assert ("[5m]" in rule["expr"]) == (rule["alert"] == "MessagingPipelineStalled"), rule
    assert any("[30s]" in rule["expr"] for rule in scaled)
    custom = _rules(rules.render_alert_rules(
        thresholds={**rules.load_thresholds(), "spam_reports_per_1k_warning": 3}))
    warning = next(r for r in custom if r["alert"] == "MessagingSpamReportsHigh"
                   and r["labels"]["severity"] == "warning")
    assert warning["expr"].strip().endswith("> 3")
    assert "threshold is 3" in warning["annotations"]["description"]


@pytest.mark.parametrize(
    ("text", "factor", "expected"),
    [("10m", 0.05, "30s"), ("1d", 1 / 60, "24m"), ("90s", 1, "1m30s"), ("2m", 0.001, "1s"),
     ("1h30m", 2, "3h")],
)
def test_duration_scaling(text: str, factor: float, expected: str) -> None:
    assert rules.scale_duration(text, factor) == expected


def test_bad_parameters_are_rejected() -> None:
    with pytest.raises(ValueError):
        rules.render_alert_rules(baseline_offset="yesterday")
    with pytest.raises(ValueError):
        rules.render_alert_rules(for_scale=0)
    with pytest.raises(ValueError):
        rules.render_alertmanager_config("127.0.0.1:9095/alerts")
    with pytest.raises(ValueError):
        rules.render_prometheus_config([], "alertmanager:9093", ["alert_rules.yml"])


# --- the configs ---------------------------------------------------------------------------------
def test_prometheus_config_scrapes_every_worker_and_loads_both_rule_files() -> None:
    config = yaml.safe_load(rules.PROMETHEUS_CONFIG_PATH.read_text())
    assert config["global"] == {"scrape_interval": "5s", "evaluation_interval": "5s"}
    assert config["rule_files"] == ["recording_rules.yml", "alert_rules.yml"]
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [
        "alertmanager:9093"]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "messaging-worker" and job["scrape_interval"] == "5s"
    # docker-compose's `worker` service, every replica (a static worker:6066 would reach
    # one replica per scrape, at random, once scaled)
    (sd,) = job["dns_sd_configs"]
    assert (sd["names"], sd["type"], sd["port"]) == (["worker"], "A", 6066)
    assert "static_configs" not in job
    static = yaml.safe_load(rules.render_prometheus_config(
        ["worker:6066"], "alertmanager:9093", ["alert_rules.yml"]))
    (job,) = static["scrape_configs"]
    assert job["static_configs"] == [{"targets": ["worker:6066"]}]
    assert "dns_sd_configs" not in job


def test_alertmanager_routes_by_severity_and_inhibits_warnings() -> None:
    config = yaml.safe_load(rules.render_alertmanager_config("http://hooks.test:8080/a"))
    route = config["route"]
    assert route["group_by"] == ["alertname"]
    routes = {tuple(r["matchers"]): r["receiver"] for r in route["routes"]}
    assert routes == {('severity="critical"',): "messaging-critical",
                      ('severity="warning"',): "messaging-warning"}
    (inhibit,) = config["inhibit_rules"]
    assert inhibit == {"source_matchers": ['severity="critical"'],
                       "target_matchers": ['severity="warning"'], "equal": ["alertname"]}
    urls = {r["name"]: [w["url"] for w in r["webhook_configs"]] for r in config["receivers"]}
    assert urls == {"messaging-critical": ["http://hooks.test:8080/a"],
                    "messaging-warning": ["http://hooks.test:8080/a"]}
    committed = yaml.safe_load(rules.ALERTMANAGER_CONFIG_PATH.read_text())
    assert committed["receivers"][0]["webhook_configs"][0]["url"] == (
        rules.PLACEHOLDER_WEBHOOK_URL)
