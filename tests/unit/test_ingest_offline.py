"""The offline ingest measurement runs the live stage's code on simulator events
(pure: a store in a temporary directory, Kafka writes only counted)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from bench.ingest_offline import main, one_round, simulated_partition
from streams.kafka.io import partition_for


def test_a_round_takes_every_event_through_the_stage(tmp_path: Path) -> None:
    messages = simulated_partition(3_000, 4, seed=7, rate=20_000.0, speed=60.0, members=5_000)
    assert len(messages) == 3_000
    assert {partition_for(m.key, 4) for m in messages} == {0}
    result = asyncio.run(one_round(messages, 1_000, tmp_path))
    # each batch writes at least its clock, its event ids and its partials
    assert result["records_written"] >= 3 * 3
    parts = result["loop_us"] + result["batch_records_us"] + result["store_commit_us"]
    assert abs(parts - result["us_per_event"]) < 1e-6 * result["us_per_event"] + 1e-9
    assert result["loop_us"] > 0 and result["batch_records_us"] > 0


def test_a_round_samples_its_memory_when_asked(tmp_path: Path) -> None:
    messages = simulated_partition(3_000, 4, seed=7, rate=20_000.0, speed=60.0, members=5_000)
    samples = asyncio.run(one_round(messages, 500, tmp_path, memory_every=1_000))["memory"]
    assert [s["events"] for s in samples] == [1_000, 2_000, 3_000]
    assert 0 < samples[0]["event_ids"] < samples[-1]["event_ids"] <= 3_000
    assert 0 < samples[0]["event_ids_kib"] <= samples[-1]["event_ids_kib"]


def test_the_command_reports_its_rounds(tmp_path: Path) -> None:
    out = tmp_path / "rounds.json"
    assert main(["--events", "2000", "--rounds", "2", "--batch", "500", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["events"] == 2_000 and len(report["rounds"]) == 2
    assert main(["--events", "0"]) == 2
