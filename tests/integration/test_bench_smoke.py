"""The benchmark runs end to end on a small N (timings are never asserted here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.harness import ROOT

pytestmark = pytest.mark.integration


def test_bench_runs_and_reports_every_variant(kafka_bootstrap: str, tmp_path) -> None:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}
    variants = ["ceiling", "faust", "worker"]  # quix needs the 'bench' extra
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--events", "30000", "--variants", ",".join(variants),
         "--warmup-events", "5000", "--skip-freshness", "--output-dir", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    (result_file,) = tmp_path.glob("*.json")
    result = json.loads(result_file.read_text())
    outcomes = {v["name"]: v for v in result["variants"]}
    assert sorted(outcomes) == sorted(variants)
    for name in variants:
        assert outcomes[name]["status"] == "ok", outcomes[name]
        assert outcomes[name]["peak_rss_bytes"] > 0
    assert outcomes["ceiling"]["events_per_second"] > 0
    # the broker was warmed by a worker of its own group, which took its share and stopped
    assert result["warmup"]["status"] == "ok" and result["warmup"]["name"] == "warmup"
    # each worker was stopped with SIGTERM as soon as it had its events, an ingest
    # process perhaps still joining its group: every one stopped within its deadline
    for log_file in tmp_path.glob("*-logs/w*.log"):
        assert "shutdown took over" not in log_file.read_text(), log_file.name
    warm_written = result["warmup"]["info"]["offsets_written_per_event"]
    assert any(t.endswith(".ingest.state") and r > 0 for t, r in warm_written.items())
    assert result["versions"]["faust-streaming"] and result["versions"]["aiokafka"]
    written = outcomes["worker"]["info"]["offsets_written_per_event"]
    state = next(rate for topic, rate in written.items() if topic.endswith(".ingest.state"))
    assert 0 < state < 2, written  # conversation changelog records, a few per event at most


def test_bench_restart_measures_a_kill_and_a_restart(kafka_bootstrap: str, tmp_path) -> None:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--restart", "--events", "20000",
         "--restart-new-events", "500", "--restart-settle", "2", "--ingest-processes", "2", "--output-dir", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    (result_file,) = tmp_path.glob("*.json")
    restart = json.loads(result_file.read_text())["restart"]
    assert restart["events"] == 20_000 and restart["new_events"] == 500
    assert 0 < restart["conversations"] < 20_000
    assert restart["restart_seconds"] > restart["metrics_up_seconds"] > 0
    assert restart["rss_before_kill_bytes"] > 0 and restart["rss_after_restart_bytes"] > 0
    # sampled every second while the worker idled, the last one just before the kill
    assert len(restart["rss_settling_bytes"]) >= 2
    assert restart["rss_settling_bytes"][-1] == restart["rss_before_kill_bytes"]
    for moment in ("at_done", "before_kill", "after_restart"):  # the sum, and by process
        processes = restart[f"rss_{moment}_by_process"]
        assert [p["role"] for p in processes].count("main") == 1
        assert [p["role"] for p in processes].count("child") == 2  # the ingest processes
        assert sum(p["rss_bytes"] for p in processes) == restart[f"rss_{moment}_bytes"]
    assert any("ingest restored" in line for line in restart["restored"]), restart["restored"]
    # the worker's RocksDB, from /metrics (the ingest's is as of its children's last batch:
    # with a 2-s settle they may still be sharing the partitions out, owning none)
    store = restart["state_store_before_kill_bytes"]
    assert set(store) == {"ingest", "risk"}
    assert store["risk"]["memtables"] > 0, store
    ids = restart["event_ids_before_kill"]  # as of the children's last batch, too
    assert set(ids) == {"ids", "bytes"} and ids["bytes"] >= 16 * ids["ids"], ids
    assert "restart after kill -9" in completed.stdout
