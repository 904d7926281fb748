"""(c) Quix Streams: tumbling 60 s event-time count per (type, platform, channel).

``sdf = app.dataframe(topic)``; the event's ``ts`` is the message timestamp (a
``timestamp_extractor``); ``sdf.group_by(segment)`` then
``.tumbling_window(60_000, grace_ms=...).count().final()``. Quix windows per
*message key* and the events topic is keyed by conversation, so the stream has to be
re-keyed by segment first: ``group_by`` produces every event again to a
``repartition__`` topic and consumes it back (that is in the measured cost). An event
counts as done when Quix reports it processed from the repartition topic
(``on_message_processed``, i.e. after its window update).

    python -m bench.peers.quix_tumbling --topic T --group G --events N --status FILE \
        --state-dir DIR
"""

from __future__ import annotations

from typing import Any

from bench.peers.progress import WINDOW_SECONDS, Progress, peer_parser, segment_key
from streams.settings import Settings

GRACE_MS = 3_600_000  # far beyond the input's disorder: no event is dropped as late


def _broker(settings: Settings) -> Any:
    if settings.kafka_security_protocol == "PLAINTEXT":
        return settings.bootstrap
    from quixstreams.kafka.configuration import ConnectionConfig

    password = settings.kafka_sasl_password
    return ConnectionConfig(
        bootstrap_servers=settings.bootstrap,
        security_protocol=settings.kafka_security_protocol.lower(),
        sasl_mechanism=settings.kafka_sasl_mechanism,
        sasl_username=settings.kafka_sasl_username,
        sasl_password=password.get_secret_value() if password else None,
        ssl_ca_location=settings.kafka_ssl_cafile,
        ssl_certificate_location=settings.kafka_ssl_certfile,
        ssl_key_location=settings.kafka_ssl_keyfile,
    )


def _event_time_ms(value: Any, headers: Any, timestamp: int, timestamp_type: Any) -> int:
    return int(value["ts"] * 1000)


def main() -> None:
    parser = peer_parser(__doc__)
    parser.add_argument("--group", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--grace-ms", type=int, default=GRACE_MS,
                        help="window grace in event-time ms (default %(default)s)")
    args = parser.parse_args()

    from quixstreams import Application

    settings = Settings()
    progress = Progress(args.status, args.events)
    emitted = 0

    def processed(topic: str, partition: int, offset: int) -> None:
        if topic.startswith("repartition__"):
            progress.add()

    app = Application(
        broker_address=_broker(settings),
        consumer_group=args.group,
        auto_offset_reset="earliest",
        state_dir=args.state_dir,
        loglevel="WARNING",
        on_message_processed=processed,
    )
    topic = app.topic(
        args.topic, key_deserializer="bytes", value_deserializer="json",
        timestamp_extractor=_event_time_ms,
    )

    def count_emitted(value: Any) -> None:
        nonlocal emitted
        emitted += 1
        progress.extra["windows_emitted"] = emitted

    def count_late(*args: Any, **kwargs: Any) -> bool:
        progress.extra["late_dropped"] = progress.extra.get("late_dropped", 0) + 1
        return False  # counted here instead of logged

    sdf = app.dataframe(topic)
    sdf = sdf.group_by(segment_key, name="segment")
    window = sdf.tumbling_window(WINDOW_SECONDS * 1000, grace_ms=args.grace_ms, on_late=count_late)
    sdf = window.count().final()
    sdf = sdf.update(count_emitted)
    app.run()
    progress.write()


if __name__ == "__main__":
    main()
