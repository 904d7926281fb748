"""What makes a local broker a secured one: a ``SASL_SSL`` listener (TLS with client
certificates required, then SCRAM-SHA-512), SCRAM users written at format time (KRaft
keeps them in its metadata log), and the standard authorizer with
``allow.everyone.if.no.acl.found=false``, so a user may do exactly what ACLs grant.

The controller listener (the broker's own link to its KRaft controller, on loopback)
authenticates with SASL/PLAIN as the admin, a super user; clients never use it.
Passwords are random per broker, kept in files of mode 0600, and never printed: the
broker's properties hold the admin's, the env files each client's (see
:meth:`BrokerSecurity.env_file`).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import for_code
from aiokafka.protocol.admin import CreateAclsRequest, DeleteAclsRequest
from pydantic import SecretStr

from deploy.tls import Authority, Issued
from streams.kafka.access import (
    OPERATION_CODES,
    PATTERN_CODES,
    RESOURCE_CODES,
    Grant,
    acl_commands,
    producer_grants,
    worker_grants,
)
from streams.kafka.io import ensure_topics
from streams.settings import Settings

MECHANISM = "SCRAM-SHA-512"
LISTENER = "SASL_SSL"
ADMIN = "admin"


@dataclass(frozen=True)
class ScramUser:
    name: str
    password: str = field(default_factory=lambda: secrets.token_hex(16), repr=False)


@dataclass(frozen=True)
class BrokerSecurity:
    """The TLS material and users of one secured broker, in ``directory``."""

    directory: Path
    authority: Authority
    server: Issued
    users: dict[str, ScramUser]  # by name; the admin is one of them
    certificates: dict[str, Issued]  # a client certificate per user

    @classmethod
    def create(cls, directory: Path, users: tuple[str, ...] = ("worker", "producer")) -> BrokerSecurity:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        authority = Authority.create(directory)
        names = (ADMIN, *users)
        return cls(
            directory, authority, authority.issue(directory, "kafka-broker", server=True),
            {name: ScramUser(name) for name in names},
            {name: authority.issue(directory, f"client-{name}", server=False) for name in names},
        )

    @property
    def admin(self) -> ScramUser:
        return self.users[ADMIN]

    def format_arguments(self) -> list[str]:
        """``kafka-storage format`` arguments that write the SCRAM users' credentials
        into the cluster's first metadata (no broker needed to create them)."""
        return [
            argument for user in self.users.values()
            for argument in ("--add-scram", f"{MECHANISM}=[name={user.name},password={user.password}]")
        ]

    def broker_properties(self, host: str, port: int, controller_port: int) -> list[str]:
        admin = self.admin
        plain_jaas = (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'username="{admin.name}" password="{admin.password}" '
            f'user_{admin.name}="{admin.password}";'
        )
        scram_jaas = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{admin.name}" password="{admin.password}";'
        )
        return [
            f"listeners={LISTENER}://{host}:{port},CONTROLLER://{host}:{controller_port}",
            f"advertised.listeners={LISTENER}://{host}:{port}",
            f"listener.security.protocol.map={LISTENER}:SASL_SSL,CONTROLLER:SASL_PLAINTEXT",
            f"inter.broker.listener.name={LISTENER}",
            f"sasl.enabled.mechanisms={MECHANISM}",
            f"sasl.mechanism.inter.broker.protocol={MECHANISM}",
            f"listener.name.{LISTENER.lower()}.{MECHANISM.lower()}.sasl.jaas.config={scram_jaas}",
            "sasl.mechanism.controller.protocol=PLAIN",
            "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
            f"listener.name.controller.plain.sasl.jaas.config={plain_jaas}",
            "ssl.keystore.type=PEM",
            f"ssl.keystore.location={self.server.pem}",
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={self.authority.cert}",
            f"listener.name.{LISTENER.lower()}.ssl.client.auth=required",
            "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "allow.everyone.if.no.acl.found=false",
            f"super.users=User:{admin.name}",
        ]

    def client_settings(self, user: str) -> dict[str, str]:
        """A user's client settings, as environment variables of :class:`Settings`."""
        certificate = self.certificates[user]
        return {
            "KAFKA_SECURITY_PROTOCOL": LISTENER,
            "KAFKA_SASL_MECHANISM": MECHANISM,
            "KAFKA_SASL_USERNAME": user,
            "KAFKA_SASL_PASSWORD": self.users[user].password,
            "KAFKA_SSL_CAFILE": str(self.authority.cert),
            "KAFKA_SSL_CERTFILE": str(certificate.cert),
            "KAFKA_SSL_KEYFILE": str(certificate.key),
        }

    def env_file(self, user: str, bootstrap: str) -> Path:
        """A 0600 file of the user's settings, for ``set -a; . FILE; set +a``."""
        path = self.directory / f"{user}.env"
        lines = [f"KAFKA_BOOTSTRAP_SERVERS={bootstrap}"]
        lines += [f"{name}={value}" for name, value in self.client_settings(user).items()]
        _write_private(path, "\n".join(lines) + "\n")
        return path

    def admin_command_config(self) -> Path:
        """The admin's client properties for Kafka's own tools (``--command-config``)."""
        admin, certificate = self.admin, self.certificates[ADMIN]
        path = self.directory / "admin.properties"
        _write_private(path, "\n".join([
            f"security.protocol={LISTENER}",
            f"sasl.mechanism={MECHANISM}",
            (
                "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule "
                f'required username="{admin.name}" password="{admin.password}";'
            ),
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={self.authority.cert}",
            "ssl.keystore.type=PEM",
            f"ssl.keystore.location={certificate.pem}",
        ]) + "\n")
        return path


ALLOW, ANY_HOST = 3, "*"
ACL_TOOL = "org.apache.kafka.tools.AclCommand"  # what kafka-acls.sh runs


def admin_settings(security: BrokerSecurity, bootstrap: str, settings: Settings) -> Settings:
    """``settings`` (topic names, app id) with the admin's connection."""
    env = security.client_settings(ADMIN)
    return settings.model_copy(update={
        "kafka_bootstrap_servers": bootstrap,
        **{name.lower(): value for name, value in env.items()},
        "kafka_sasl_password": SecretStr(security.admin.password),
    })


async def provision(security: BrokerSecurity, bootstrap: str, settings: Settings,
                    jars: Path) -> None:
    """What an operator does once for a secured cluster, for ``settings``' names: the
    admin creates the topics, then grants the worker and the producer their ACLs with
    the very ``kafka-acls`` commands the README shows (Kafka's own tool)."""
    await ensure_topics(admin_settings(security, bootstrap, settings))
    config = str(security.admin_command_config())
    for principal, grants in (("worker", worker_grants(settings)),
                              ("producer", producer_grants(settings))):
        for command in acl_commands(principal, grants, bootstrap, config):
            run_kafka_tool(jars, ACL_TOOL, command[1:])


def run_kafka_tool(jars: Path, main_class: str, arguments: list[str]) -> None:
    """One of Kafka's command-line tools, from the broker's jars (no Kafka install)."""
    java = shutil.which("java") or "java"
    done = subprocess.run(
        [java, "-Xmx256m", "-XX:TieredStopAtLevel=1", "-cp", f"{jars}/*", main_class,
         *arguments],
        capture_output=True, text=True, check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{main_class} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")


async def change_acls(admin_options: dict[str, Any], principal: str, grants: Iterable[Grant],
                      *, revoke: bool = False) -> None:
    """Allow (or, with ``revoke``, stop allowing) ``grants`` to ``User:principal``: the
    same ACLs as the ``kafka-acls`` commands of :func:`streams.kafka.access.acl_commands`,
    sent by the Admin API as the admin (faster than a JVM per command)."""
    admin = AIOKafkaAdminClient(**admin_options)
    await admin.start()
    try:
        for grant in grants:
            for operation in grant.operations:
                request_type = DeleteAclsRequest if revoke else CreateAclsRequest
                request = request_type(
                    RESOURCE_CODES[grant.resource], grant.name, PATTERN_CODES[grant.pattern],
                    f"User:{principal}", ANY_HOST, OPERATION_CODES[operation], ALLOW,
                )
                response = await admin._send_request(request)
                results = response.filter_responses if revoke else response.creation_responses
                for code, message, *_ in results:
                    if code:
                        raise for_code(code)(f"{grant.describe()} {operation}: {message}")
    finally:
        await admin.close()


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
