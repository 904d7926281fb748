"""Who may do what on Kafka: the exact ACLs the worker and the producer need, and a check
that says, in one line, what is wrong when Kafka refuses one of them.

The grants are data (:func:`worker_grants`, :func:`producer_grants`): the README's table
and ``kafka-acls`` commands are rendered from them (a test keeps the two in step), the
local secured broker applies them, and :func:`check_access` checks them at start.

:func:`check_access` tells apart what retrying cannot mend from what it can:
- a wrong user or password, a certificate not trusted either way, a client speaking
  PLAINTEXT to a TLS listener, a missing permission: :class:`KafkaAccessError`, whose
  message names the setting or the resource (never a secret);
- a broker that is down, unreachable or slow: the connection error itself, which
  callers retry as an outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from aiokafka.client import AIOKafkaClient, CoordinationType
from aiokafka.conn import create_conn
from aiokafka.errors import (
    AuthenticationFailedError,
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    IllegalSaslStateError,
    IncompatibleBrokerVersion,
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
    UnsupportedSaslMechanismError,
)
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Boolean, Int16, Int32, Schema, String

from streams.settings import Settings

log = logging.getLogger(__name__)

EXIT_CODE = 78  # EX_CONFIG (sysexits.h): a supervisor should not restart into the same refusal
ResourceType = Literal["topic", "group", "transactional-id"]

# Kafka's AclOperation codes; the bit ``1 << code`` is set in an authorized-operations field
OPERATION_CODES = {"READ": 3, "WRITE": 4, "CREATE": 5, "DELETE": 6, "ALTER": 7,
                   "DESCRIBE": 8, "DESCRIBE_CONFIGS": 10, "ALTER_CONFIGS": 11}
RESOURCE_CODES = {"topic": 2, "group": 3, "transactional-id": 5}
PATTERN_CODES = {"literal": 3, "prefixed": 4}
TOPIC_AUTHORIZATION_FAILED, UNKNOWN_TOPIC = 29, 3
REFUSALS = (
    AuthenticationFailedError, SaslAuthenticationFailed, IllegalSaslStateError,
    TopicAuthorizationFailedError, GroupAuthorizationFailedError,
    ClusterAuthorizationFailedError, TransactionalIdAuthorizationFailed,
)
COORDINATOR_ATTEMPTS = 20  # half a second apart


class KafkaAccessError(Exception):
    """Kafka refused this client for a reason retrying cannot mend. ``str()`` is the one
    line an operator reads: what was refused and which setting or ACL to look at."""


@dataclass(frozen=True)
class Grant:
    """Operations allowed on one resource (READ, WRITE; DESCRIBE comes with either)."""

    resource: ResourceType
    name: str
    operations: tuple[str, ...]
    why: str
    pattern: Literal["literal", "prefixed"] = "literal"

    def describe(self) -> str:
        suffix = "*" if self.pattern == "prefixed" else ""
        return f"{self.resource} {self.name}{suffix}"


def leader_topic(settings: Settings) -> str:
    """Faust's partition-assignor topic (one partition; every worker reads it)."""
    return f"{settings.app_id}-__assignor-__leader"


def worker_grants(settings: Settings) -> list[Grant]:
    """Everything the worker does on Kafka, and nothing more: no CREATE (an admin
    creates the topics, see ``messaging-metrics topics``), no cluster permission
    (transactional producers need WRITE on their transactional id only)."""
    s, app = settings, settings.app_id
    return [
        Grant("topic", s.events_topic, ("READ",), "ingest: its input"),
        Grant("topic", s.dlq_topic, ("WRITE",), "ingest: rejected input"),
        Grant("topic", s.partials_topic, ("READ", "WRITE"),
              "ingest writes partials; the aggregate agent reads them"),
        Grant("topic", s.ingest_state_topic, ("READ", "WRITE"),
              "ingest: its state changelog, read back on assignment"),
        Grant("topic", s.activity_topic, ("READ", "WRITE"),
              "ingest writes sender activity; the risk stage reads it"),
        Grant("topic", s.risk_state_topic, ("READ", "WRITE"), "risk stage: its state changelog"),
        Grant("topic", s.flagged_topic, ("WRITE",), "risk stage: flagged senders"),
        Grant("topic", s.metrics_topic, ("READ", "WRITE") if s.history_remote_write_url
              else ("WRITE",),
              "aggregate agent: closed windows (and the history stage reads them, when "
              "HISTORY_REMOTE_WRITE_URL is set)"),
        Grant("topic", s.aggregate_state_topic, ("READ", "WRITE"),
              "aggregate agent: its owners' state"),
        Grant("topic", leader_topic(s), ("READ",), "Faust's partition assignor"),
        Grant("group", app, ("READ",), "the aggregate agent's consumer group (Faust)"),
        Grant("group", f"{app}-ingest", ("READ",), "the ingest stage's consumer group"),
        Grant("group", f"{app}-risk", ("READ",), "the risk stage's consumer group"),
        *([Grant("group", f"{app}-history", ("READ",),
                 "the history stage's consumer group (HISTORY_REMOTE_WRITE_URL set)")]
          if s.history_remote_write_url else []),
        Grant("transactional-id", f"{app}-ingest-", ("WRITE",),
              "ingest: one transactional producer per WORKER_ID (and ingest child)",
              "prefixed"),
        Grant("transactional-id", f"{app}-risk-", ("WRITE",),
              "risk stage: one transactional producer per WORKER_ID", "prefixed"),
    ]


def producer_grants(settings: Settings) -> list[Grant]:
    return [Grant("topic", settings.events_topic, ("WRITE",), "the events it produces")]


def transactional_ids(settings: Settings) -> list[str]:
    """The worker's transactional ids (see the stages), for the start-up check."""
    app, worker = settings.app_id, settings.worker_id
    ingest = [f"{app}-ingest-{worker}"] + [
        f"{app}-ingest-{worker}.ingest{i}" for i in range(settings.ingest_processes)
    ]
    return [*ingest, f"{app}-risk-{worker}"]


def acl_commands(principal: str, grants: Iterable[Grant],
                 bootstrap: str = "$KAFKA_BOOTSTRAP_SERVERS",
                 command_config: str = "admin.properties") -> list[list[str]]:
    """``kafka-acls.sh`` argument lists that grant exactly ``grants`` to ``principal``:
    one command per kind of resource, set of operations and pattern (the tool grants
    every operation it is given on every resource it is given)."""
    option = {"topic": "--topic", "group": "--group", "transactional-id": "--transactional-id"}
    groups: dict[tuple[str, tuple[str, ...], str], list[str]] = {}
    for grant in grants:
        groups.setdefault((grant.resource, grant.operations, grant.pattern), []).append(grant.name)
    commands = []
    for (resource, operations, pattern), names in groups.items():
        command = ["kafka-acls.sh", "--bootstrap-server", bootstrap,
                   "--command-config", command_config, "--add",
                   "--allow-principal", f"User:{principal}"]
        for operation in operations:
            command += ["--operation", operation.title()]
        for name in names:
            command += [option[resource], name]
        if pattern != "literal":
            command += ["--resource-pattern-type", pattern]
        commands.append(command)
    return commands


# --- Metadata v8: each topic with the operations this principal may do on it ---------
class MetadataResponse_v8(Response):
    API_KEY = 3
    API_VERSION = 8
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("brokers", Array(("node_id", Int32), ("host", String("utf-8")), ("port", Int32),
                          ("rack", String("utf-8")))),
        ("cluster_id", String("utf-8")),
        ("controller_id", Int32),
        ("topics", Array(
            ("error_code", Int16),
            ("name", String("utf-8")),
            ("is_internal", Boolean),
            ("partitions", Array(
                ("error_code", Int16), ("partition_index", Int32), ("leader_id", Int32),
                ("leader_epoch", Int32), ("replica_nodes", Array(Int32)),
                ("isr_nodes", Array(Int32)), ("offline_replicas", Array(Int32)),
            )),
            ("topic_authorized_operations", Int32),
        )),
        ("cluster_authorized_operations", Int32),
    )


class MetadataRequest_v8(RequestStruct):
    API_KEY = 3
    API_VERSION = 8
    RESPONSE_TYPE = MetadataResponse_v8
    SCHEMA = Schema(
        ("topics", Array(String("utf-8"))),
        ("allow_auto_topic_creation", Boolean),
        ("include_cluster_authorized_operations", Boolean),
        ("include_topic_authorized_operations", Boolean),
    )


class AuthorizedTopicsRequest(Request[MetadataRequest_v8]):
    API_KEY = 3

    def __init__(self, topics: list[str]) -> None:
        self._topics = topics

    def build(self, request_struct_class: type[MetadataRequest_v8]) -> MetadataRequest_v8:
        return request_struct_class(self._topics, False, False, True)


# --- the check -------------------------------------------------------------------------
async def check_access(settings: Settings, grants: list[Grant],
                       transactional: Iterable[str] = ()) -> None:
    """Connect as ``settings`` say and check that every grant is in place; raise
    :class:`KafkaAccessError` naming the first thing Kafka refuses. A topic that does
    not exist is not checked (whoever creates topics comes first, and says if it may
    not); connection failures that retrying may mend are raised as they are."""
    await _connect_once(settings)
    options = settings.kafka_client_options()
    client = AIOKafkaClient(**options)
    try:
        await client.bootstrap()
        await _check_topics(client, settings, [g for g in grants if g.resource == "topic"])
        for grant in grants:
            if grant.resource == "group":
                await _check_coordinator(client, settings, CoordinationType.GROUP, grant.name,
                                         grant)
        for transactional_id in transactional:
            grant = next((g for g in grants if g.resource == "transactional-id"
                          and transactional_id.startswith(g.name)), None)
            await _check_coordinator(client, settings, CoordinationType.TRANSACTION,
                                     transactional_id, grant)
    finally:
        await client.close()


def _user(settings: Settings) -> str:
    if settings.kafka_sasl_mechanism and settings.kafka_sasl_username:
        return f"user {settings.kafka_sasl_username!r}"
    return "this client"


async def _check_topics(client: AIOKafkaClient, settings: Settings, grants: list[Grant]) -> None:
    if not grants:
        return
    node = client.get_random_node()
    try:
        response = await client.send(node, AuthorizedTopicsRequest([g.name for g in grants]))
    except (NotImplementedError, IncompatibleBrokerVersion):  # a broker older than 2.3
        log.info("Kafka does not report authorized operations; topic ACLs are not checked")
        return
    by_name = {topic[1]: topic for topic in response.topics}
    for grant in grants:
        error, _, _, _, allowed = by_name[grant.name]
        if error == UNKNOWN_TOPIC:
            continue
        if error == TOPIC_AUTHORIZATION_FAILED:
            missing = list(grant.operations)
        else:
            missing = [op for op in grant.operations if not allowed >> OPERATION_CODES[op] & 1]
        if missing:
            raise KafkaAccessError(
                f"Kafka does not allow {_user(settings)} {'/'.join(missing)} on "
                f"{grant.describe()} ({grant.why}); grant it (README: Kafka ACLs)"
            )


async def _check_coordinator(client: AIOKafkaClient, settings: Settings, kind: int, key: str,
                             grant: Grant | None) -> None:
    try:
        for attempt in range(COORDINATOR_ATTEMPTS):
            try:
                await client.coordinator_lookup(kind, key)
                return
            except KafkaError as exc:  # a new cluster makes its internal topics first
                if not exc.retriable or attempt == COORDINATOR_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(0.5)
    except (GroupAuthorizationFailedError, TransactionalIdAuthorizationFailed):
        what = "group" if kind == CoordinationType.GROUP else "transactional-id"
        needs = "/".join(grant.operations) if grant else "WRITE"
        why = f" ({grant.why})" if grant else ""
        raise KafkaAccessError(
            f"Kafka does not allow {_user(settings)} {needs} on {what} {key}{why}; grant it "
            "(README: Kafka ACLs)"
        ) from None


async def _connect_once(settings: Settings) -> None:
    """One connection to a bootstrap server, as the clients make them, to learn why it
    fails: aiokafka's own bootstrap logs the cause and raises 'Unable to bootstrap'."""
    options = settings.kafka_client_options()
    failures: list[BaseException] = []
    for address in settings.bootstrap.split(","):
        host, _, port = address.strip().rpartition(":")
        try:
            conn = await create_conn(
                host, int(port), request_timeout_ms=10_000,
                ssl_context=options.get("ssl_context"),
                security_protocol=settings.kafka_security_protocol,
                sasl_mechanism=settings.kafka_sasl_mechanism,
                sasl_plain_username=settings.kafka_sasl_username,
                sasl_plain_password=options.get("sasl_plain_password"),
            )
        except Exception as exc:  # noqa: BLE001 - explained, or raised as it is
            explained = await _explain(settings, host, int(port), exc)
            if explained is not None:
                raise explained from None
            failures.append(exc)
            continue
        conn.close()
        return
    raise failures[-1]


async def _explain(settings: Settings, host: str, port: int,
                   exc: BaseException) -> KafkaAccessError | None:
    """The operator's line for a connection that failed for good; None for a failure
    retrying may mend (refused, reset, timed out)."""
    where = f"Kafka at {host}:{port}"
    protocol = settings.kafka_security_protocol
    if isinstance(exc, SaslAuthenticationFailed | AuthenticationFailedError |
                  IllegalSaslStateError):
        return KafkaAccessError(
            f"{where} refused the credentials of {_user(settings)} "
            f"({settings.kafka_sasl_mechanism}): wrong user name or password "
            "(KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD)"
        )
    if isinstance(exc, UnsupportedSaslMechanismError):
        return KafkaAccessError(f"{where}: {exc} (KAFKA_SASL_MECHANISM)")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return KafkaAccessError(
            f"{where} presented a TLS certificate this client does not trust "
            f"({exc.verify_message}): KAFKA_SSL_CAFILE must hold the CA that signed it"
        )
    if isinstance(exc, ssl.SSLError):
        return KafkaAccessError(f"{where} failed the TLS handshake: {exc.reason or exc}")
    if not isinstance(exc, KafkaConnectionError | ConnectionError):
        return None
    if "SSL" in protocol:  # TLS 1.3: a client certificate is refused after the handshake
        refusal = await _tls_refusal(host, port, settings.kafka_client_options()["ssl_context"],
                                     settings.kafka_ssl_certfile is not None)
        if refusal is not None:
            return KafkaAccessError(f"{where} {refusal}")
    elif await _speaks_tls(host, port):
        return KafkaAccessError(
            f"{where} speaks TLS, and KAFKA_SECURITY_PROTOCOL is {protocol}: set SSL or "
            "SASL_SSL (and the KAFKA_SSL_* files)"
        )
    return None


_CLIENT_CERTIFICATE_REFUSALS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED":
        "requires a client certificate: set KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "does not trust this client's certificate "
        "(KAFKA_SSL_CERTFILE): a CA in the broker's truststore must have signed it",
    "TLSV1_ALERT_UNKNOWN_CA": "does not trust this client's certificate "
        "(KAFKA_SSL_CERTFILE): a CA in the broker's truststore must have signed it",
    "SSLV3_ALERT_BAD_CERTIFICATE": "refused this client's certificate (KAFKA_SSL_CERTFILE)",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED":
        "refused this client's certificate as expired (KAFKA_SSL_CERTFILE)",
}


_NO_CERTIFICATE_REFUSALS = {"TLSV13_ALERT_CERTIFICATE_REQUIRED", "SSLV3_ALERT_BAD_CERTIFICATE"}


async def _tls_refusal(
    host: str, port: int, context: ssl.SSLContext, sends_certificate: bool
) -> str | None:
    """What the broker says of this client's certificate: under TLS 1.3 its refusal comes
    as an alert after the handshake, and aiokafka reports it as a closed connection. A
    JDK refuses an empty certificate chain with ``certificate_required`` or with
    ``bad_certificate`` (17.0.15 does the latter), so without a certificate of ours
    either means that one is required."""
    try:
        async with asyncio.timeout(5):
            reader, writer = await asyncio.open_connection(host, port, ssl=context)
    except (OSError, TimeoutError):
        return None
    try:
        async with asyncio.timeout(2):
            await reader.read(1)  # the broker speaks only when spoken to, or alerts
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        if not sends_certificate and reason in _NO_CERTIFICATE_REFUSALS:
            reason = "TLSV13_ALERT_CERTIFICATE_REQUIRED"
        return _CLIENT_CERTIFICATE_REFUSALS.get(reason, f"ended the TLS session ({reason})")
    except (OSError, TimeoutError):
        pass
    finally:
        writer.close()
    return None


async def _speaks_tls(host: str, port: int) -> bool:
    """Whether the listener answers a TLS handshake (the certificate is not checked:
    this only asks which protocol the port speaks)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        async with asyncio.timeout(5):
            _, writer = await asyncio.open_connection(host, port, ssl=context)
    except ssl.SSLError as exc:  # a TLS alert is TLS too; garbage is not
        return "WRONG_VERSION_NUMBER" not in str(exc) and "record layer" not in str(exc)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return True


async def explain_refusal(settings: Settings, exc: BaseException, grants: list[Grant],
                          transactional: Iterable[str] = ()) -> str | None:
    """For a client that failed mid-run because Kafka refused it something: one line
    naming what (the grants are checked again to find the one that went missing); None
    when ``exc`` is no refusal."""
    said = describe_refusal(exc, settings)
    if said is None:
        return None
    try:
        await check_access(settings, grants, transactional)
    except KafkaAccessError as refused:
        return str(refused)
    except Exception:  # the broker may be the trouble now: say what we know
        log.debug("could not check access again", exc_info=True)
    return said


def describe_refusal(exc: BaseException, settings: Settings) -> str | None:
    """The one line for an error Kafka raised mid-run that retrying cannot mend, when it
    is a refusal of access; None for anything else."""
    current: BaseException | None = exc
    while current is not None:
        if isinstance(current, KafkaAccessError):
            return str(current)
        if isinstance(current, REFUSALS):
            return f"Kafka refused {_user(settings)}: {current}"
        current = current.__cause__ or current.__context__
    return None

