"""One frozen settings object, read from the environment once (12-factor).

Nothing else in the project reads ``os.environ``: commands build a :class:`Settings`
and pass it down. Every field is documented in the README's settings table; a test
keeps the two in step.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", frozen=True, extra="ignore")

    # --- Kafka connection -------------------------------------------------------------
    kafka_bootstrap_servers: str | None = Field(
        default=None,
        description="Kafka bootstrap servers. Unset: the demo and tests start a local broker.",
    )
    kafka_security_protocol: str = Field(
        default="PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."
    )
    kafka_sasl_mechanism: str | None = Field(
        default=None, description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 when SASL is used."
    )
    kafka_sasl_username: str | None = Field(default=None, description="SASL user name.")
    kafka_sasl_password: SecretStr | None = Field(
        default=None, description="SASL password (never printed)."
    )
    kafka_ssl_cafile: str | None = Field(default=None, description="CA bundle for SSL.")
    kafka_ssl_certfile: str | None = Field(default=None, description="Client certificate.")
    kafka_ssl_keyfile: str | None = Field(default=None, description="Client private key.")

    # --- topics -----------------------------------------------------------------------
    events_topic: str = Field(default="messaging.events", description="Input events.")
    dlq_topic: str = Field(
        default="messaging.events.dlq", description="Rejected input, with the reason."
    )
    partials_topic: str = Field(
        default="messaging.partials", description="Pre-aggregated partials, keyed by segment."
    )
    ingest_state_topic: str = Field(
        default="messaging.ingest.state",
        description="Compacted changelog of the ingest's per-conversation state.",
    )
    metrics_topic: str = Field(
        default="messaging.metrics", description="One record per closed window and owner."
    )
    aggregate_state_topic: str = Field(
        default="messaging.aggregate.state",
        description="Compacted topic of the aggregate owners' state (one record per "
        "partials partition: open windows, watermark, applied offsets).",
    )
    activity_topic: str = Field(
        default="messaging.sender-activity",
        description="Per-sender activity partials, repartitioned by sender for the risk stage.",
    )
    risk_state_topic: str = Field(
        default="messaging.risk.state", description="Compacted changelog of the risk stage."
    )
    flagged_topic: str = Field(
        default="messaging.risk.flagged-senders",
        description="One record per flagged sender, rule and window, with the evidence.",
    )
    events_partitions: int = Field(
        default=4, ge=1, description="Partitions when the events topic is created."
    )
    partials_partitions: int = Field(
        default=4, ge=1, description="Partitions of the partials topic (aggregate owners)."
    )

    activity_partitions: int = Field(
        default=4, ge=1, description="Partitions of the sender-activity topic (risk owners)."
    )
    topic_replication_factor: int = Field(
        default=1, ge=1, description="Replication factor of the topics the worker creates "
        "(Faust's own included). 3 on a production cluster.",
    )
    topic_min_insync_replicas: int | None = Field(
        default=None, ge=1, description="min.insync.replicas of the topics the worker "
        "creates; unset: the broker's default. 2 with replication factor 3.",
    )

    # --- risk rules -------------------------------------------------------------------
    risk_velocity_messages: int = Field(
        default=40, ge=1, description="Flag a sender with at least this many messages in a window."
    )
    risk_spam_reports: int = Field(
        default=3, ge=1, description="Flag a sender with at least this many spam reports "
        "received in a window.",
    )
    risk_inmail_min_sent: int = Field(
        default=100, ge=1, description="InMail rule: only recruiters with at least this many "
        "InMails over the horizon are judged.",
    )
    risk_inmail_min_response_rate: float = Field(
        default=0.13, ge=0, le=1, description="InMail rule: flag below this response rate "
        "(LinkedIn's public policy: 13%).",
    )
    risk_inmail_horizon_seconds: int = Field(
        default=14 * 86_400, ge=1, description="InMail rule: the event-time horizon (14 days)."
    )
    risk_inmail_bucket_seconds: int = Field(
        default=86_400, ge=1, description="InMail rule: the horizon is kept in buckets this long.",
    )

    # --- worker -----------------------------------------------------------------------
    app_id: str = Field(
        default="messaging-metrics",
        description="Faust app id: prefixes the consumer groups (and Faust's own assignor topic).",
    )
    worker_id: str = Field(
        default_factory=socket.gethostname,
        description="Stable id of this worker; names its transactional producer. "
        "Unique per running worker, the same across its restarts.",
    )
    window_seconds: int = Field(default=60, ge=1, description="Tumbling window length.")
    allowed_lateness_seconds: int = Field(
        default=30, ge=0, description="Event-time lateness accepted before a window closes."
    )
    idle_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="Wall seconds without input after which a partition stops holding "
        "the watermark back, so the last windows close when traffic stops.",
    )
    ingest_processes: int = Field(
        default=0, ge=0, le=64,
        description="Child processes that run the ingest stage, each on a share of the "
        "events partitions (0: inside the worker process). Give it the spare cores.",
    )
    ingest_max_batch: int = Field(
        default=40_000, ge=1,
        description="Most events the ingest takes in one batch (one transaction). "
        "Matters under a backlog: each batch has fixed costs (a transaction, partials "
        "per segment, sketches, marks), so larger batches catch up faster.",
    )
    ingest_poll_timeout_ms: int = Field(
        default=200, ge=1, description="How long the ingest waits for a batch."
    )
    transaction_timeout_ms: int = Field(
        default=15_000,
        ge=1000,
        description="Kafka transaction timeout of the ingest and risk stages' producers. "
        "Also about the longest a restore waits for the transaction of a previous owner "
        "that froze or died mid-commit (the broker aborts it then, checking every 10 s by "
        "default; every second on the brokers this project starts).",
    )
    conversation_ttl_seconds: float = Field(
        default=7 * 86_400, gt=0, description="Event-time seconds after its start that a "
        "conversation is remembered (a later reply is not a first reply).",
    )
    inmail_response_horizon_seconds: float = Field(
        default=30 * 86_400, gt=0, description="Event-time seconds an InMail has to be "
        "answered (a reply, or accepted or declined) to count as responded: LinkedIn's "
        "30 days. InMail conversations are remembered this long (or CONVERSATION_TTL_SECONDS "
        "if longer).",
    )
    dedup_horizon_seconds: float = Field(
        default=3_600, gt=0, description="Event-time seconds an event id is remembered; a "
        "repeat within it is rejected as duplicate_event_id.",
    )
    max_ahead_seconds: float = Field(
        default=86_400, gt=0, description="Reject events this far ahead of their partition's "
        "newest event time (timestamp_too_far_ahead): one bad clock cannot close every window.",
    )
    state_dir: Path | None = Field(
        default=None, description="Where the ingest keeps its conversations and the risk "
        "stage its recruiters' InMail history on disk (RocksDB, a directory per worker, "
        "stage and partition) with a local checkpoint, so that a "
        "restart on the same disk reads only the changelog's tail. Give each worker its "
        "own, on a persistent disk. Unset: a temporary directory, removed when the worker "
        "stops (a restart then reads its whole changelog back).",
    )
    state_cache_conversations: int = Field(
        default=100_000, ge=0, description="Conversations kept in memory per events "
        "partition (the most recently used); the rest are read from STATE_DIR when needed.",
    )
    session_timeout_ms: int = Field(
        default=10_000, ge=6000, description="Consumer group session timeout: how long a "
        "vanished worker's partitions wait before others take them.",
    )
    shutdown_timeout_seconds: float = Field(
        default=20.0, gt=0, description="On SIGTERM the worker commits its batch in flight "
        "and stops; past this bound it exits anyway.",
    )
    max_event_bytes: int = Field(
        default=65_536, ge=256, description="Larger input messages are rejected."
    )
    metrics_host: str = Field(default="127.0.0.1", description="Bind address of /metrics.")
    metrics_port: int = Field(default=6066, ge=0, le=65535, description="Port of /metrics.")
    history_remote_write_url: str = Field(
        default="", description="Prometheus remote-write endpoint (`.../api/v1/write`) that "
        "gets every closed window, whole, at its event time (`messaging_eventtime_*`); "
        "empty: no history is written.",
    )
    log_level: str = Field(default="INFO", description="Python log level.")
    cache_dir: Path = Field(
        default_factory=lambda: Path.home() / ".cache" / "messaging-metrics",
        description="Where the local Kafka broker's jars are cached between runs.",
    )

    # --- producer (CLI options fall back to these) -----------------------------------
    producer_rate: float = Field(
        default=2000.0, ge=0, description="Mean events per wall second (the time of day shapes it); 0 sends as fast as possible."
    )
    producer_speed: float = Field(
        default=60.0, gt=0, description="Event-time seconds per wall second (time compression): the producer sends each event when (ts - start) / speed wall seconds have passed."
    )
    producer_seed: int = Field(default=42, description="Simulator seed.")
    producer_members: int = Field(default=20_000, ge=10, description="Simulated population.")
    producer_scenario: str = Field(
        default="baseline",
        description="Simulator scenario: baseline, spam-wave, reply-drop, latency-incident "
        "or bot-sender; the incident starts 30 event-minutes in (docs/runbooks.md).",
    )
    producer_diurnal_amplitude: float = Field(
        default=0.6, ge=0, lt=1, description="How much the time of day shapes the "
        "simulated traffic: conversation starts follow 1 + A*cos(hour - 14h UTC); 0 is flat.",
    )
    producer_warmup_seconds: float = Field(
        default=0.0, ge=0, description="Event-time seconds of history generated before the "
        "start and sent as fast as possible, so rates and latencies start at steady state.",
    )
    producer_then_live: bool = Field(
        default=False, description="No event is sent before the wall clock reaches its ts: "
        "history (the warmup, a past start) is replayed up to now, then events go out live "
        "(1x, PRODUCER_RATE / PRODUCER_SPEED per second). For a Prometheus that gets the "
        "workers' history (it takes no samples from the future).",
    )

    @field_validator("kafka_security_protocol")
    @classmethod
    def _known_protocol(cls, value: str) -> str:
        value = value.upper()
        if value not in {"PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"}:
            raise ValueError(f"unknown security protocol {value!r}")
        return value

    @property  # not cached: model_copy() would carry a cached value into the copy
    def bootstrap(self) -> str:
        if not self.kafka_bootstrap_servers:
            raise RuntimeError(
                "KAFKA_BOOTSTRAP_SERVERS is not set (the demo and tests start a local broker)"
            )
        return self.kafka_bootstrap_servers

    def kafka_client_options(self) -> dict[str, Any]:
        """Connection options shared by every aiokafka client we create."""
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap,
            "security_protocol": self.kafka_security_protocol,
        }
        if self.kafka_sasl_mechanism:
            options["sasl_mechanism"] = self.kafka_sasl_mechanism
            options["sasl_plain_username"] = self.kafka_sasl_username
            if self.kafka_sasl_password is not None:
                options["sasl_plain_password"] = self.kafka_sasl_password.get_secret_value()
        if "SSL" in self.kafka_security_protocol:
            from aiokafka.helpers import create_ssl_context

            options["ssl_context"] = create_ssl_context(
                cafile=self.kafka_ssl_cafile,
                certfile=self.kafka_ssl_certfile,
                keyfile=self.kafka_ssl_keyfile,
            )
        return options
