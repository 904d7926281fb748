"""The worker and the producer against a secured broker: SASL_SSL (TLS with client
certificates, SCRAM-SHA-512) and ACLs enforced (``allow.everyone.if.no.acl.found=false``).

- A seeded run, over SASL_SSL, by a worker and a producer that hold exactly the ACLs
  the README grants (applied with the README's own ``kafka-acls`` commands, Kafka's
  tool), is exact against the independent recount (read by the admin).
- Bad credentials, an untrusted certificate either way, a plaintext client on the TLS
  port, a missing ACL: the process exits 78 within seconds, with one line saying which
  (and for an ACL, which resource), and no retry storm.
- A permission withdrawn mid-run stops the worker loudly; with it back, a new worker
  ends the run exact: nothing partial was committed.
- No log of any of it holds a password.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import SecretStr

from deploy.kafka_security import BrokerSecurity, admin_settings, change_acls, provision
from deploy.local_kafka import LocalKafka, resolve_jars
from deploy.tls import Authority
from streams.kafka.access import EXIT_CODE, Grant, producer_grants, worker_grants
from streams.kafka.io import ensure_topics
from streams.settings import Settings
from tests.harness import ROOT, WorkerProcess, settings_env, wait_until
from tests.integration.test_reliability import PacedProducer, check_run
from tests.pipeline import encoded, processed_total, simulated

pytestmark = pytest.mark.integration

ERROR_LINE = re.compile(r"\[ERROR\]| ERROR ")  # Faust's log format, and ours before Faust
REFUSED_WITHIN = 20.0  # wall seconds from start to exit, Python's start-up included


def security_of(broker: LocalKafka) -> BrokerSecurity:
    assert broker.security is not None
    return broker.security


def as_user(broker: LocalKafka, user: str, base: Settings, **changes: object) -> Settings:
    """``base`` (its topic names and app id) connecting to the secured broker as ``user``."""
    env = security_of(broker).client_settings(user)
    return base.model_copy(update={
        "kafka_bootstrap_servers": broker.bootstrap_servers,
        **{name.lower(): value for name, value in env.items()},
        "kafka_sasl_password": SecretStr(env["KAFKA_SASL_PASSWORD"]),
        **changes,
    })


def secrets_of(broker: LocalKafka) -> list[str]:
    return [user.password for user in security_of(broker).users.values()]


def assert_no_secret(broker: LocalKafka, *texts: str) -> None:
    for text in texts:
        for secret in secrets_of(broker):
            assert secret not in text, "a password is in a log"


@dataclass
class Refusal:
    code: int
    seconds: float
    output: str

    def errors(self) -> list[str]:
        return [line for line in self.output.splitlines() if ERROR_LINE.search(line)]


def run_refused(command: list[str], settings: Settings, tmp_path: Path) -> Refusal:
    """Run a CLI command that must be refused; its exit code, wall time and output."""
    env = settings_env(settings, log_level="DEBUG")  # the most a log could leak
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "streams", *command], env=env, cwd=ROOT, capture_output=True,
        text=True, timeout=120, check=False,
    )
    refusal = Refusal(done.returncode, time.monotonic() - started, done.stdout + done.stderr)
    (tmp_path / f"{command[0]}.log").write_text(refusal.output)
    return refusal


@pytest.fixture
def granted(secured_kafka: LocalKafka, base_settings: Settings) -> Iterator[Settings]:
    """This test's topics made by the admin; ``base_settings`` names, no grants yet."""
    admin = admin_settings(security_of(secured_kafka), secured_kafka.bootstrap_servers,
                           base_settings)
    asyncio.run(ensure_topics(admin))
    yield admin


def grant(broker: LocalKafka, principal: str, grants: list[Grant], revoke: bool = False) -> None:
    asyncio.run(change_acls(broker.client_options("admin"), principal, grants, revoke=revoke))


# --- the pipeline, least privilege ---------------------------------------------------------
def test_a_run_over_sasl_ssl_with_least_privilege_is_exact(
    secured_kafka: LocalKafka, base_settings: Settings, tmp_path: Path
) -> None:
    """The README's names, users and kafka-acls commands, as an operator would run them."""
    security = security_of(secured_kafka)
    defaults = Settings(kafka_bootstrap_servers=secured_kafka.bootstrap_servers,
                        idle_timeout_seconds=3.0, cache_dir=base_settings.cache_dir)
    asyncio.run(provision(security, secured_kafka.bootstrap_servers, defaults,
                          resolve_jars(Settings().cache_dir)))
    events = simulated(12_000, seed=31)
    worker = WorkerProcess(as_user(secured_kafka, "worker", defaults),
                           tmp_path / "worker.log", worker_id="w0").start()
    try:
        producer = PacedProducer(as_user(secured_kafka, "producer", defaults), encoded(events),
                                 rate=6000)
        producer.start()
        producer.join_checked()
        wait_until(lambda: processed_total(worker) >= len(events), 60, "every event processed")
        check_run(admin_settings(security, secured_kafka.bootstrap_servers, defaults), events,
                  [worker], crashed=False)
    finally:
        code = worker.stop()
    assert code == 0
    log = worker.log_path.read_text()
    assert "Authenticated as worker via SCRAM-SHA-512" in log
    assert_no_secret(secured_kafka, log,
                     (Path(str(secured_kafka.data_dir)) / "broker.log").read_text())


# --- refusals at start -----------------------------------------------------------------------
def other_authority(tmp_path: Path) -> Authority:
    return Authority.create(tmp_path / "other-ca", "some other CA")


def foreign_client_certificate(tmp_path: Path) -> dict[str, object]:
    issued = other_authority(tmp_path).issue(tmp_path / "other-ca", "intruder", server=False)
    return {"kafka_ssl_certfile": str(issued.cert), "kafka_ssl_keyfile": str(issued.key)}


CONNECTION_CASES = {
    "wrong-password": (
        lambda tmp: {"kafka_sasl_password": SecretStr("not-the-password")},
        "refused the credentials of user 'worker' (SCRAM-SHA-512): wrong user name or password",
    ),
    "untrusted-broker-certificate": (
        lambda tmp: {"kafka_ssl_cafile": str(other_authority(tmp).cert)},
        "presented a TLS certificate this client does not trust",
    ),
    "untrusted-client-certificate": (
        foreign_client_certificate,
        "does not trust this client's certificate (KAFKA_SSL_CERTFILE)",
    ),
    "no-client-certificate": (
        lambda tmp: {"kafka_ssl_certfile": None, "kafka_ssl_keyfile": None},
        "requires a client certificate",
    ),
    "plaintext-client": (
        lambda tmp: {"kafka_security_protocol": "PLAINTEXT", "kafka_sasl_mechanism": None},
        "speaks TLS, and KAFKA_SECURITY_PROTOCOL is PLAINTEXT",
    ),
}


@pytest.mark.parametrize("command", ["worker", "produce"])
@pytest.mark.parametrize("case", list(CONNECTION_CASES), ids=list(CONNECTION_CASES))
def test_a_bad_connection_setting_is_refused_in_one_line(
    secured_kafka: LocalKafka, granted: Settings, tmp_path: Path, case: str, command: str
) -> None:
    changes, expected = CONNECTION_CASES[case]
    user = "worker" if command == "worker" else "producer"
    settings = as_user(secured_kafka, user, granted, **changes(tmp_path))
    refusal = run_refused([command, "--events", "10"] if command == "produce" else [command],
                          settings, tmp_path)
    assert refusal.code == EXIT_CODE, refusal.output[-3000:]
    assert refusal.seconds < REFUSED_WITHIN
    errors = refusal.errors()
    assert len(errors) == 1 and expected.replace("'worker'", f"'{user}'") in errors[0], errors
    assert_no_secret(secured_kafka, refusal.output)
    assert refusal.output.count("Unable connect") <= 1  # no retry storm


def _without(grants: list[Grant], name: str, operation: str) -> list[Grant]:
    """``grants`` less ``operation`` on the resource ``name``."""
    out = []
    for g in grants:
        if g.name == name:
            rest = tuple(op for op in g.operations if op != operation)
            if rest:
                out.append(Grant(g.resource, g.name, rest, g.why, g.pattern))
        else:
            out.append(g)
    return out


ACL_CASES = {  # what is withheld: the resource (from the settings) and the operation
    "partials-write": (lambda s: s.partials_topic, "WRITE", "WRITE on topic {name} "),
    "risk-group": (lambda s: f"{s.app_id}-risk", "READ", "READ on group {name} "),
    "ingest-transactional-id": (
        lambda s: f"{s.app_id}-ingest-", "WRITE", "WRITE on transactional-id {name}w0 "
    ),
    "producer-events-write": (lambda s: s.events_topic, "WRITE", "WRITE on topic {name} "),
}


@pytest.mark.parametrize("case", list(ACL_CASES), ids=list(ACL_CASES))
def test_a_missing_acl_is_named(
    secured_kafka: LocalKafka, granted: Settings, tmp_path: Path, case: str
) -> None:
    resource, operation, expected = ACL_CASES[case]
    name = resource(granted)
    producing = case.startswith("producer")
    user = "producer" if producing else "worker"
    grants = producer_grants(granted) if producing else worker_grants(granted)
    grant(secured_kafka, user, _without(grants, name, operation))
    command = ["produce", "--events", "10"] if producing else ["worker"]
    refusal = run_refused(command, as_user(secured_kafka, user, granted, worker_id="w0"),
                          tmp_path)
    assert refusal.code == EXIT_CODE, refusal.output[-3000:]
    assert refusal.seconds < REFUSED_WITHIN
    errors = refusal.errors()
    assert len(errors) == 1, errors
    assert f"Kafka does not allow user '{user}' {expected.format(name=name)}" in errors[0]
    assert_no_secret(secured_kafka, refusal.output)


# --- a permission lost mid-run ----------------------------------------------------------------
# the transactional stages' activity topic (the ingest writes it, the risk stage reads
# it), and the aggregate agent's state records (sent without waiting for each: its
# offset commits wait for them instead)
@pytest.mark.parametrize(("topic_field", "stages"), [
    ("activity_topic", ("ingest", "risk")), ("aggregate_state_topic", ("aggregate",)),
])
def test_a_permission_lost_mid_run_stops_the_worker_and_commits_nothing_partial(
    secured_kafka: LocalKafka, granted: Settings, tmp_path: Path, topic_field: str,
    stages: tuple[str, ...],
) -> None:
    settings = granted.model_copy(update={"idle_timeout_seconds": 3.0})
    grant(secured_kafka, "worker", worker_grants(settings))
    grant(secured_kafka, "producer", producer_grants(settings))
    events = simulated(30_000, seed=37)
    worker_settings = as_user(secured_kafka, "worker", settings)
    worker = WorkerProcess(worker_settings, tmp_path / "worker.log", worker_id="w0").start()
    producer = PacedProducer(as_user(secured_kafka, "producer", settings), encoded(events),
                             rate=3000)
    try:
        producer.start()
        wait_until(lambda: processed_total(worker) > len(events) / 4, 60, "a quarter processed")
        topic = getattr(settings, topic_field)
        withdrawn = [g for g in worker_grants(settings) if g.name == topic]
        grant(secured_kafka, "worker", withdrawn, revoke=True)
        withdrawn_at = time.monotonic()
        assert worker.process is not None
        code = worker.process.wait(timeout=60)
        print(f"the worker stopped {time.monotonic() - withdrawn_at:.1f} s after the ACL went")
        assert code == EXIT_CODE
        log = worker.log_path.read_text()
        stops = [line for line in log.splitlines() if "stage stops:" in line]
        assert stops and topic in stops[0], stops
        assert any(f"{stage} stage stops:" in stops[0] for stage in stages), stops
        # the permission back, a new incarnation finishes the run: exact, so nothing of the
        # failed transactions was committed
        grant(secured_kafka, "worker", withdrawn)
        worker = WorkerProcess(worker_settings, tmp_path / "worker-2.log", worker_id="w0").start()
        producer.join_checked()
        check_run(settings, events, [worker], crashed=True)
    finally:
        code = worker.stop()
    assert code == 0
    assert_no_secret(secured_kafka, *(p.read_text() for p in tmp_path.glob("*.log")))
