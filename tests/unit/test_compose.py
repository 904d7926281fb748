"""docker-compose.yml and the Dockerfile, checked without a Docker engine: the compose
specification schema (check-jsonschema), mounts and build contexts that exist, healthy
dependencies, healthchecks, pinned images, a secret without default, no root."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.local_kafka import kafka_version
from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
CLUSTER_ENV = ROOT / "deploy" / "compose-cluster.env"
ROOT_USERS = {"0", "root"}
DEFAULTED = re.compile(r"\$\{(\w+):-([^}]*)\}")


def rendered(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The services as compose interpolates ``${NAME:-default}`` with ``env``."""
    text = DEFAULTED.sub(lambda m: env.get(m.group(1), m.group(2)), COMPOSE.read_text())
    return yaml.safe_load(text)["services"]


def env_file(path: Path) -> dict[str, str]:
    lines = [line.strip() for line in path.read_text().splitlines()]
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def _build(service: dict[str, Any]) -> tuple[Path, Path] | None:
    """(context, Dockerfile) of a service built here, else None."""
    build = service.get("build")
    if build is None:
        return None
    if isinstance(build, str):
        build = {"context": build}
    context = ROOT / build.get("context", ".")
    return context, context / build.get("dockerfile", "Dockerfile")


def _dockerfile_final_stage(path: Path) -> list[str]:
    """Instructions of the last stage, continuation lines joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    starts = [i for i, line in enumerate(lines) if line.upper().startswith("FROM ")]
    return lines[starts[-1]:]


def _instruction(lines: list[str], name: str) -> list[str]:
    return [line[len(name):].strip() for line in lines if line.upper().startswith(name + " ")]


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {key: None if value is None else str(value) for key, value in env.items()}


def test_compose_file_matches_the_compose_specification() -> None:
    tool = Path(sys.executable).parent / "check-jsonschema"
    assert tool.exists(), "check-jsonschema is a dev dependency: run `uv sync`"
    result = subprocess.run(
        [str(tool), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_bind_mount_and_build_context_exists(services: dict[str, dict[str, Any]]) -> None:
    declared = set(yaml.safe_load(COMPOSE.read_text()).get("volumes") or {})
    missing = []
    for name, service in services.items():
        for volume in service.get("volumes", []):
            if isinstance(volume, dict):
                source, bind = volume.get("source", ""), volume.get("type") == "bind"
            else:
                source = volume.split(":", 1)[0]
                bind = source.startswith((".", "/", "~"))
            if bind and not (ROOT / source).exists():
                missing.append(f"{name}: {source}")
            if not bind and source:
                assert source in declared, f"{name}: named volume {source} is not declared"
        if (build := _build(service)) is not None:
            missing += [f"{name}: build {path}" for path in build if not path.exists()]
    assert not missing, f"missing on the host: {missing}"


def test_every_dependency_waits_for_a_healthy_service(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: depends_on needs conditions"
        for target, spec in depends_on.items():
            assert target in services, f"{name} depends on unknown {target}"
            assert spec.get("condition") == "service_healthy", f"{name} -> {target}"


def test_every_service_has_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        check = service.get("healthcheck")
        if check is not None:
            assert not check.get("disable") and check.get("test"), name
            continue
        build = _build(service)
        assert build is not None, f"{name}: no healthcheck"
        healthcheck = _instruction(_dockerfile_final_stage(build[1]), "HEALTHCHECK")
        assert healthcheck and "CMD" in healthcheck[-1], f"{name}: no HEALTHCHECK in {build[1]}"


def test_no_service_runs_as_root(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if "user" in service:
            user = str(service["user"]).split(":", 1)[0]
        else:
            build = _build(service)
            assert build is not None, f"{name}: no user: and no Dockerfile USER to fall back on"
            users = _instruction(_dockerfile_final_stage(build[1]), "USER")
            assert users, f"{name}: {build[1]} has no USER"
            user = users[-1].split(":", 1)[0]
        assert user not in ROOT_USERS, f"{name} runs as {user}"


def test_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if "build" in service:
            continue
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: {image} is not pinned"
    assert services["kafka"]["image"] == f"apache/kafka:{kafka_version()}"
    assert re.fullmatch(r"grafana/grafana-oss:11\.\d+\.\d+", services["grafana"]["image"])
    assert re.fullmatch(r"prom/prometheus:v[23]\.\d+\.\d+", services["prometheus"]["image"])
    assert re.fullmatch(r"prom/alertmanager:v\d+\.\d+\.\d+", services["alertmanager"]["image"])


def test_grafana_admin_password_has_no_default(services: dict[str, dict[str, Any]]) -> None:
    password = _environment(services["grafana"])["GF_SECURITY_ADMIN_PASSWORD"]
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?[^}]*\}", password), password


REPLICATION = ("DEFAULT_REPLICATION_FACTOR", "OFFSETS_TOPIC_REPLICATION_FACTOR",
               "TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
               "SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR")
MIN_ISR = ("MIN_INSYNC_REPLICAS", "TRANSACTION_STATE_LOG_MIN_ISR",
           "SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR")


def test_kafka_is_a_single_kraft_node_by_default() -> None:
    services = rendered({})
    env = _environment(services["kafka"])
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://kafka:9092"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    for factor in REPLICATION + MIN_ISR:
        assert env[f"KAFKA_{factor}"] == "1", factor
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert [name for name, s in services.items() if s["image"].startswith("apache/kafka")
            and "cluster" not in s.get("profiles", [])] == ["kafka"]


def test_the_cluster_profile_is_three_kraft_voters_with_replication_3() -> None:
    services = rendered(env_file(CLUSTER_ENV))
    nodes = {name: _environment(s) for name, s in services.items()
             if s["image"] == f"apache/kafka:{kafka_version()}"}
    assert sorted(nodes) == ["kafka", "kafka-2", "kafka-3"]
    assert all(services[n].get("profiles") == ["cluster"] for n in ("kafka-2", "kafka-3"))
    voters = {f"{env['KAFKA_NODE_ID']}@{name}:9093" for name, env in nodes.items()}
    advertised = []
    for name, env in nodes.items():
        assert set(env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")) == voters, name
        assert env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://{name}:9092"
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
        assert all(env[f"KAFKA_{f}"] == "3" for f in REPLICATION), name
        assert all(env[f"KAFKA_{f}"] == "2" for f in MIN_ISR), name
        assert env["KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE"] == "false"
        advertised.append(f"{name}:9092")
        assert services[name]["volumes"] == [f"{name}-data:/var/lib/kafka/data"]
    assert len({env["KAFKA_NODE_ID"] for env in nodes.values()}) == 3
    assert len({env["CLUSTER_ID"] for env in nodes.values()}) == 1
    worker = _environment(services["worker"])
    assert worker["KAFKA_BOOTSTRAP_SERVERS"].split(",") == advertised
    assert (worker["TOPIC_REPLICATION_FACTOR"], worker["TOPIC_MIN_INSYNC_REPLICAS"]) == ("3", "2")
    producer = _environment(services["producer"])
    assert producer["KAFKA_BOOTSTRAP_SERVERS"] == worker["KAFKA_BOOTSTRAP_SERVERS"]


def test_workers_scale() -> None:
    services = rendered({})
    worker = services["worker"]
    assert "container_name" not in worker
    assert all(":" not in str(port) for port in worker.get("ports", [])), "fixed host port"
    env = _environment(worker)
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert env["METRICS_HOST"] == "0.0.0.0"
    assert "WORKER_ID" not in env, "one WORKER_ID for all replicas breaks transactions"
    assert worker["command"] == ["worker"]
    assert services["producer"]["command"] == ["produce"]


def test_grafana_mounts_match_its_provisioning(services: dict[str, dict[str, Any]]) -> None:
    mounts = dict(v.split(":")[:2] for v in services["grafana"]["volumes"])
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = yaml.safe_load((ROOT / "grafana/provisioning/dashboards/messaging.yml").read_text())
    assert mounts["./grafana/dashboards"] == provider["providers"][0]["options"]["path"]


def test_dockerfile() -> None:
    lines = _dockerfile_final_stage(ROOT / "Dockerfile")
    text = (ROOT / "Dockerfile").read_text()
    assert all(line.startswith("FROM python:3.11-slim")
               for line in text.splitlines() if line.upper().startswith("FROM "))
    makefile_uv = re.search(r"^UV_VERSION\s*:=\s*(\S+)", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert makefile_uv and f'uv=={makefile_uv.group(1)}"' in text, "uv pin differs from Makefile"
    assert "uv sync --frozen --no-dev" in text
    for package in ("streams", "producers", "deploy"):
        assert re.search(rf"^COPY {package}/ ", text, re.MULTILINE), package
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "messaging-metrics" in scripts
    assert _instruction(lines, "ENTRYPOINT") == ['["messaging-metrics"]']
    assert _instruction(lines, "CMD") == ['["worker"]']
    assert "6066" in _instruction(lines, "EXPOSE")
    assert "/healthz" in _instruction(lines, "HEALTHCHECK")[-1]


def test_dockerignore_keeps_the_context_small() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", ".git", "tests"} <= ignored


def test_prometheus_discovers_scaled_workers() -> None:
    """The mounted prometheus.yml finds every worker replica by DNS (skipped until the
    file exists: the mount test above already fails for it)."""
    path = ROOT / "prometheus" / "prometheus.yml"
    if not path.exists():
        pytest.skip("prometheus/prometheus.yml not written yet")
    config = yaml.safe_load(path.read_text())
    discovered = [
        sd for job in config.get("scrape_configs", []) for sd in job.get("dns_sd_configs", [])
        if "worker" in sd.get("names", [])
    ]
    assert discovered, "no dns_sd_configs with names: [worker]"
    assert discovered[0].get("type", "SRV") == "A" and discovered[0].get("port") == 6066


def test_every_compose_broker_runs_the_local_brokers_garbage_collector_settings() -> None:
    """The G1 options the local broker runs with (16 MB regions: our MB-sized produce
    requests are not humongous) are every compose broker's too, cluster profile included:
    the same broker in both, the same cost per event."""
    from deploy.local_kafka import JVM_OPTIONS

    gc_options = {option for option in JVM_OPTIONS if option.startswith("-XX:")}
    brokers = {name: service for name, service in rendered(env_file(CLUSTER_ENV)).items()
               if str(service.get("image", "")).startswith("apache/kafka")}
    assert len(brokers) == 3
    for name, service in brokers.items():
        options = set(_environment(service).get("KAFKA_JVM_PERFORMANCE_OPTS", "").split())
        assert gc_options <= options, f"{name}: {sorted(gc_options - options)} missing"


def test_every_variable_of_the_apps_is_a_setting() -> None:
    """The settings ignore unknown variables, so a misspelt one would be silently lost."""
    services = rendered({})
    for name in ("worker", "producer"):
        unknown = set(_environment(services[name])) - {f.upper() for f in Settings.model_fields}
        assert unknown == set(), name


def test_the_producer_replays_history_then_runs_live() -> None:
    """The workers write every window into Prometheus at its event time, and Prometheus
    takes no samples from the future: event time must not run ahead of the wall clock.
    A day and more of history gives the same-time-yesterday comparisons their data."""
    services = rendered({})
    producer = Settings(**{k.lower(): v for k, v in _environment(services["producer"]).items()})
    assert producer.producer_then_live
    assert producer.producer_warmup_seconds > 86_400
    assert _environment(services["worker"])["HISTORY_REMOTE_WRITE_URL"] == (
        "http://prometheus:9090/api/v1/write"
    )
    assert "--web.enable-remote-write-receiver" in services["prometheus"]["command"]
