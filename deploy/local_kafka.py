"""Throwaway Apache Kafka brokers (KRaft combined mode), no Docker: one node, or a
cluster of three.

The broker's jars come from Maven Central through ``deploy/kafka/pom.xml`` and are
cached (``CACHE_DIR``), so only the first run downloads. Each broker gets free loopback
ports and a temporary data directory, and is stopped by PID. A :class:`LocalKafkaCluster`
runs three combined broker+controller nodes (a three-voter quorum), with replication
factor 3 and ``min.insync.replicas=2`` for every topic by default, internal ones too.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from aiokafka.errors import KafkaError

from deploy.kafka_security import ADMIN, BrokerSecurity
from deploy.processes import stop_process

log = logging.getLogger(__name__)

KAFKA_DIR = Path(__file__).resolve().parent / "kafka"
POM = KAFKA_DIR / "pom.xml"
LOG4J_CONFIG = KAFKA_DIR / "log4j2.properties"
# Kafka's recommended G1 settings, with its 16 MB regions: our stages send produce
# requests of several MB (a transaction's batches), and with the 1 MB regions G1
# picks for a heap this size each request buffer is a "humongous" object that starts
# a concurrent GC cycle. Measured (bench, 1M events): in 2 of 7 runs those cycles
# doubled the broker's CPU per event (8 s/M against 4); with 16 MB regions, none.
JVM_OPTIONS = (
    "-Xmx768m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35", "-XX:G1HeapRegionSize=16M",
)


def kafka_version() -> str:
    """The broker version pinned in the pom (docker-compose pins the same)."""
    text = POM.read_text()
    start = text.index("<kafka.version>") + len("<kafka.version>")
    return text[start : text.index("</kafka.version>", start)]


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port free now and not handed out by this process before. Ports are
    chosen before whoever gets them binds them, and the kernel can give the one it just
    gave back again: a broker's two listeners once got the same port, and the test
    session's broker did not start."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def resolve_jars(cache_dir: Path) -> Path:
    """Copy the broker's runtime jars into the cache once per pom; return their folder."""
    pom_digest = hashlib.sha256(POM.read_bytes()).hexdigest()[:8]
    jars = cache_dir / f"kafka-{kafka_version()}-{pom_digest}" / "jars"
    done = jars / ".complete"
    if done.exists():
        return jars
    mvn = shutil.which("mvn")
    if mvn is None:
        raise RuntimeError("Maven (mvn) is needed to fetch the Kafka broker's jars")
    log.info("resolving Kafka %s jars from Maven Central into %s", kafka_version(), jars)
    if jars.exists():
        shutil.rmtree(jars)
    subprocess.run(
        [
            mvn, "-B", "-f", str(POM), "dependency:copy-dependencies",
            f"-DoutputDirectory={jars}", "-DincludeScope=runtime",
        ],
        check=True,
    )
    done.touch()
    return jars


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise RuntimeError("a Java runtime (JDK 17) is needed to run the Kafka broker")
    return java


@dataclass
class LocalKafka:
    """One broker+controller on loopback. Use as a context manager or start()/stop().

    Alone by default; a :class:`LocalKafkaCluster` makes it one of several voters.
    """

    cache_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    controller_port: int = 0
    data_dir: Path | None = None
    node_id: int = 1
    voters: str = ""  # the quorum, "id@host:port,..."; empty: this node alone
    cluster_id: str = field(default_factory=lambda: uuid.uuid4().bytes.hex()[:22])
    replication: int = 1  # default replication factor, internal topics' included
    # SASL_SSL, SCRAM users and ACLs (see deploy.kafka_security); None: PLAINTEXT, open
    security: BrokerSecurity | None = None
    # How long a new consumer group's first join waits for more members. Kafka's default
    # is 3000; the tests' workers start one group at a time, and 0 saves them 3 s each.
    initial_rebalance_delay_ms: int = 0
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _own_data_dir: bool = field(default=False, init=False)

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def pids(self) -> list[int]:
        return [self.pid] if self.pid is not None else []

    def _properties(self) -> str:
        assert self.data_dir is not None
        voters = self.voters or f"{self.node_id}@{self.host}:{self.controller_port}"
        replicas = self.replication
        min_isr = max(1, replicas - 1)  # one replica may be lost without refusing writes
        listeners = (
            self.security.broker_properties(self.host, self.port, self.controller_port)
            if self.security is not None else [
                (
                    f"listeners=PLAINTEXT://{self.host}:{self.port},"
                    f"CONTROLLER://{self.host}:{self.controller_port}"
                ),
                f"advertised.listeners=PLAINTEXT://{self.host}:{self.port}",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                "inter.broker.listener.name=PLAINTEXT",
            ]
        )
        return "\n".join(
            [
                "process.roles=broker,controller",
                f"node.id={self.node_id}",
                f"controller.quorum.voters={voters}",
                "controller.listener.names=CONTROLLER",
                *listeners,
                f"log.dirs={self.data_dir / 'logs'}",
                "num.partitions=1",
                f"default.replication.factor={replicas}",
                f"min.insync.replicas={min_isr}",
                f"offsets.topic.replication.factor={replicas}",
                "offsets.topic.num.partitions=4",
                f"transaction.state.log.replication.factor={replicas}",
                f"transaction.state.log.min.isr={min_isr}",
                "transaction.state.log.num.partitions=4",
                f"share.coordinator.state.topic.replication.factor={replicas}",
                f"share.coordinator.state.topic.min.isr={min_isr}",
                "unclean.leader.election.enable=false",
                f"group.initial.rebalance.delay.ms={self.initial_rebalance_delay_ms}",
                "auto.create.topics.enable=false",
                "log.cleaner.backoff.ms=1000",
                # a dead worker's open transaction is aborted within 1 s of its timeout,
                # not 10 s (Kafka's default): the restore of its successor waits that less
                "transaction.abort.timed.out.transaction.cleanup.interval.ms=1000",
            ]
        ) + "\n"

    def start(self, timeout: float = 90.0) -> Self:
        if self.process is not None:
            return self
        self.launch()
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def launch(self) -> None:
        """Format the storage if new, and start the process (not waiting for it)."""
        jars = resolve_jars(self.cache_dir)
        self.port = self.port or free_port()
        self.controller_port = self.controller_port or free_port()
        if self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="mm-kafka-"))
            self._own_data_dir = True
        config = self.data_dir / "server.properties"
        config.touch(mode=0o600)  # a secured broker's holds its admin's password
        config.write_text(self._properties())
        classpath = f"{jars}/*"
        base = [_java(), *JVM_OPTIONS, "-cp", classpath, f"-Dlog4j2.configurationFile={LOG4J_CONFIG}"]
        if not (self.data_dir / "logs" / "meta.properties").exists():
            subprocess.run(
                [*base, "kafka.tools.StorageTool", "format", "-t", self.cluster_id,
                 "-c", str(config),
                 *(self.security.format_arguments() if self.security is not None else [])],
                check=True, stdout=subprocess.DEVNULL,
            )
        with open(self.data_dir / "broker.log", "ab") as log_file:
            self.process = subprocess.Popen(
                [*base, "kafka.Kafka", str(config)],
                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
            )
        log.info("started Kafka %s node %d (pid %d) on %s", kafka_version(), self.node_id,
                 self.pid, self.bootstrap_servers)

    def wait_ready(self, timeout: float) -> None:
        """Wait until the broker answers a metadata request."""
        import asyncio

        from aiokafka.admin import AIOKafkaAdminClient

        async def probe() -> None:
            admin = AIOKafkaAdminClient(**self.client_options(), request_timeout_ms=3000)
            await admin.start()
            try:
                await admin.describe_cluster()
            finally:
                await admin.close()

        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"Kafka broker exited early; see {self.data_dir}/broker.log")
            try:
                with socket.create_connection((self.host, self.port), timeout=1):
                    pass
                asyncio.run(probe())
                return
            except (OSError, KafkaError):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"Kafka did not answer within {timeout}s")
                time.sleep(0.5)

    def client_options(self, user: str = ADMIN) -> dict[str, object]:
        """aiokafka connection options for this broker (as ``user``, when secured)."""
        from streams.settings import Settings

        env = self.security.client_settings(user) if self.security is not None else {}
        settings = Settings(kafka_bootstrap_servers=self.bootstrap_servers,
                            **{name.lower(): value for name, value in env.items()})
        return settings.kafka_client_options()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the broker by PID (SIGTERM, then SIGKILL) and drop a temp data dir."""
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)  # a paused broker cannot stop
            stop_process(self.process, timeout)
            log.info("stopped Kafka (pid %d)", self.process.pid)
            self.process = None
        if self._own_data_dir and self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None

    def restart(self) -> None:
        """Stop and start again on the same ports and data (broker-restart tests)."""
        own, self._own_data_dir = self._own_data_dir, False
        self.stop()
        self._own_data_dir = own
        self.start()

    def kill(self) -> None:
        """SIGKILL, as a crash: no controlled shutdown, nothing flushed. The data stays,
        for :meth:`start` on the same ports (log recovery then runs, as after a crash)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            log.info("killed Kafka (pid %d)", self.process.pid)
            self.process = None

    def pause(self) -> None:
        """SIGSTOP, as a stall (a long GC pause, a hung host): connections stay open and
        nothing answers. :meth:`resume` lets it go on."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class LocalKafkaCluster:
    """Three (``size``) combined broker+controller nodes on loopback, one quorum.

    Every topic defaults to replication factor ``size`` and ``min.insync.replicas`` one
    less, internal topics (offsets, transactions) included: one node may die and the
    cluster still takes writes, transactions included.
    """

    cache_dir: Path
    size: int = 3
    host: str = "127.0.0.1"
    nodes: list[LocalKafka] = field(default_factory=list, init=False)

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(node.bootstrap_servers for node in self.nodes)

    @property
    def pids(self) -> list[int]:
        return [pid for node in self.nodes for pid in node.pids]

    def start(self, timeout: float = 120.0) -> Self:
        if self.nodes:
            return self
        controller_ports = [free_port() for _ in range(self.size)]
        voters = ",".join(
            f"{i + 1}@{self.host}:{port}" for i, port in enumerate(controller_ports)
        )
        cluster_id = uuid.uuid4().bytes.hex()[:22]
        self.nodes = [
            LocalKafka(
                self.cache_dir, self.host, controller_port=port, node_id=i + 1, voters=voters,
                cluster_id=cluster_id, replication=self.size,
            )
            for i, port in enumerate(controller_ports)
        ]
        try:
            for node in self.nodes:  # all first: no node is ready before a quorum is up
                node.launch()
            for node in self.nodes:
                node.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def node(self, node_id: int) -> LocalKafka:
        return self.nodes[node_id - 1]

    def stop(self, timeout: float = 30.0) -> None:
        for node in self.nodes:
            node.stop(timeout)
        self.nodes = []

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def default_cache_dir() -> Path:
    return Path(os.path.expanduser("~/.cache/messaging-metrics"))
