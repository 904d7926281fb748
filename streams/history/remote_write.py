"""Prometheus remote write (protocol 1.0): samples to a Prometheus that receives them.

The messages are Prometheus' own ``prompb`` ``WriteRequest``, ``TimeSeries``, ``Label``
and ``Sample`` (``prompb/types.proto``, ``remote.proto``), described here to Google's
``protobuf`` runtime instead of generated from ``.proto`` files: four messages, and no
generated code to keep in step with the runtime's version. The body is snappy-compressed
(block format, as the protocol says) with ``cramjam``.

A write is idempotent: Prometheus ignores a sample it already has at the same timestamp
with the same value (in order or out of order), so a window written again changes
nothing. (A different value at that timestamp is refused only when it is the series'
newest sample: out of order, Prometheus 2.4x may drop it silently. The history never
writes one: see :mod:`streams.history.assembly`.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import aiohttp
import cramjam
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto


def _write_request_class() -> type:
    proto = descriptor_pb2.FileDescriptorProto(
        name="messaging_metrics_prompb.proto", package="prometheus", syntax="proto3"
    )

    def message(name: str, *fields: tuple[str, int, int, int, str]) -> None:
        described = proto.message_type.add(name=name)
        for field_name, number, kind, label, type_name in fields:
            field = described.field.add(name=field_name, number=number, type=kind,
                                        label=label)
            if type_name:
                field.type_name = type_name

    one, many = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
    message("Label", ("name", 1, _F.TYPE_STRING, one, ""),
            ("value", 2, _F.TYPE_STRING, one, ""))
    message("Sample", ("value", 1, _F.TYPE_DOUBLE, one, ""),
            ("timestamp", 2, _F.TYPE_INT64, one, ""))
    message("TimeSeries", ("labels", 1, _F.TYPE_MESSAGE, many, ".prometheus.Label"),
            ("samples", 2, _F.TYPE_MESSAGE, many, ".prometheus.Sample"))
    message("WriteRequest",
            ("timeseries", 1, _F.TYPE_MESSAGE, many, ".prometheus.TimeSeries"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("prometheus.WriteRequest"))


WriteRequest = _write_request_class()
HEADERS = {
    "Content-Encoding": "snappy",
    "Content-Type": "application/x-protobuf",
    "X-Prometheus-Remote-Write-Version": "0.1.0",
}


@dataclass(frozen=True, slots=True)
class Series:
    """One sample of one series: its name, its labels, its value at ``timestamp_ms``."""

    name: str
    labels: Mapping[str, str]
    value: float
    timestamp_ms: int


def encode(series: Iterable[Series]) -> bytes:
    """The snappy-compressed ``WriteRequest`` body for these samples."""
    request = WriteRequest()
    for item in series:
        out = request.timeseries.add()
        # Prometheus wants labels sorted by name, __name__ among them
        for name, value in sorted({"__name__": item.name, **item.labels}.items()):
            out.labels.add(name=name, value=value)
        out.samples.add(value=item.value, timestamp=item.timestamp_ms)
    return bytes(cramjam.snappy.compress_raw(request.SerializeToString()))


def decode(body: bytes) -> list[Series]:
    """The samples of a ``WriteRequest`` body (for tests and for reading back)."""
    request = WriteRequest.FromString(bytes(cramjam.snappy.decompress_raw(body)))
    decoded = []
    for out in request.timeseries:
        labels = {label.name: label.value for label in out.labels}
        name = labels.pop("__name__")
        decoded.extend(Series(name, labels, s.value, s.timestamp) for s in out.samples)
    return decoded


class RemoteWriteRejected(Exception):
    """Prometheus refused the samples for good (HTTP 400): retrying cannot help."""


class RemoteWriteFailed(Exception):
    """The write did not land (unreachable, a timeout, a 5xx, no receiver at the URL,
    refused credentials): retry it."""


class RemoteWriter:
    """POSTs write requests to one Prometheus ``/api/v1/write`` endpoint."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def write(self, series: list[Series]) -> None:
        if not series:
            return
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.post(self.url, data=encode(series),
                                          headers=HEADERS) as response:
                if response.status < 300:
                    return
                text = (await response.text()).strip()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RemoteWriteFailed(f"{self.url}: {exc!r}") from exc
        if response.status == 400:  # the samples (too old, a different value, ...)
            raise RemoteWriteRejected(f"{self.url}: HTTP {response.status}: {text}")
        # anything else is the endpoint's, not the samples' (404: no receiver there, 401,
        # 403: credentials, 429, 5xx): retried, so nothing is skipped past it
        raise RemoteWriteFailed(f"{self.url}: HTTP {response.status}: {text}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
