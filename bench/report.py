"""The bench's output: a rich table, a one-line summary per variant, a PNG bar chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

MIB = 2**20


def _broker_cpu(info: dict[str, Any]) -> str:
    """The broker's CPU per million events, and its parts by thread class: the work
    itself, the JIT compiler (a young JVM's cost) and the garbage collector."""
    total = _num(info.get("broker_cpu_seconds_per_million"), ".1f")
    parts = info.get("broker_cpu_seconds_per_million_by_thread")
    if not parts:
        return total
    return f"{total} ({parts['work']:.1f}+{parts['jit']:.1f}+{parts['gc']:.1f})"


def _num(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def one_line(outcome: Any) -> str:
    if outcome.status != "ok":
        return f"{outcome.name}: {outcome.status}: {outcome.reason}"
    rss = None if outcome.peak_rss_bytes is None else outcome.peak_rss_bytes / MIB
    return (
        f"{outcome.name}: {_num(outcome.events_per_second, ',.0f')} events/s, "
        f"{_num(outcome.cpu_seconds_per_million, '.1f')} CPU s per million events, "
        f"peak RSS {_num(rss, '.0f')} MiB"
    )


def show(result: dict[str, Any], console: Console) -> None:
    preload = result.get("preload") or {}
    versions = result.get("versions") or {}
    title = (
        f"{preload.get('events', 0):,} events, {preload.get('partitions', '?')} partitions, "
        f"{result['machine']['cpus']} CPUs"
    )
    if result.get("variants"):
        table = Table(title=title)
        for column, justify in (
            ("variant", "left"), ("events/s", "right"), ("× ceiling", "right"),
            ("CPU s / M events", "right"), ("broker CPU s / M (work+jit+gc)", "right"),
            ("peak RSS MiB", "right"), ("seconds", "right"),
            ("startup s", "right"), ("status", "left"),
        ):
            table.add_column(column, justify=justify)  # type: ignore[arg-type]
        notes = []
        for v in result["variants"]:
            rss = None if v["peak_rss_bytes"] is None else v["peak_rss_bytes"] / MIB
            status = v["status"]
            if v["reason"]:
                notes.append(f"{v['name']}: {v['status']}: {v['reason']}")
            if v["info"].get("note"):
                notes.append(f"{v['name']}: {v['info']['note']}")
            table.add_row(
                f"{v['name']} {v['label']}", _num(v["events_per_second"], ",.0f"),
                _num(v["ratio_to_ceiling"], ".3f"), _num(v["cpu_seconds_per_million"], ".1f"),
                _broker_cpu(v["info"]), _num(rss, ".0f"), _num(v["seconds"], ".2f"),
                _num(v["startup_seconds"], ".1f"),
                status,
            )
        console.print(table)
        for note in notes:
            console.print(f"  {note}")
    restart = result.get("restart")
    if restart:
        console.print(
            f"restart after kill -9: {restart['restart_seconds']:.1f} s from the new worker's "
            f"start to {restart['new_events']:,} new events processed, with "
            f"{restart['conversations'] or 0:,} conversations in state "
            f"({restart['events']:,} events); RSS {restart['rss_at_done_bytes'] / MIB:.0f} MiB "
            f"when the preload was done, {restart['rss_before_kill_bytes'] / MIB:.0f} MiB idle "
            f"before the kill, {restart['rss_after_restart_bytes'] / MIB:.0f} MiB after"
        )
        store = restart.get("state_store_before_kill_bytes") or {}
        for stage, parts in sorted(store.items()):
            console.print(f"  {stage} state before the kill: " + ", ".join(
                f"{part} {size / MIB:.1f} MiB" for part, size in parts.items()))
        ids = restart.get("event_ids_before_kill")
        if ids:
            console.print(f"  event ids before the kill: {ids['ids']:,} within the dedup "
                          f"horizon, {ids['bytes'] / MIB:.1f} MiB")
    fresh = result.get("freshness")
    if fresh:
        if fresh.get("status") == "failed":
            console.print(f"freshness: failed: {fresh['reason']}")
        else:
            console.print(
                f"freshness (worker, live {fresh['rate']:,.0f} events/s asked, "
                f"{_num(fresh['producer_events_per_second'], ',.0f')} sent, speed "
                f"{fresh['speed']:g}): p50 {_num(fresh['p50_seconds'], '.2f')} s, p95 "
                f"{_num(fresh['p95_seconds'], '.2f')} s, max {_num(fresh['max_seconds'], '.2f')} s "
                f"over {fresh['windows_measured']} windows (includes the allowed lateness, "
                f"{fresh['lateness_wall_seconds']:.2f} wall s at this speed on average: less in "
                f"the simulated night, when event time runs faster)"
            )
    soak = result.get("soak")
    if soak:
        ratio = soak["second_half_max_over_min"]
        console.print(
            f"soak: {soak['minutes']:g} min at {soak['rate']:,.0f} events/s asked, "
            f"{_num(soak['achieved_events_per_second'], ',.0f')} sent; counted "
            f"{_num(soak.get('processed'), ',.0f')}, late {_num(soak.get('late'), ',.0f')}, "
            f"invalid {_num(soak.get('invalid'), ',.0f')}; final lag "
            f"{_num(soak['final_lag'], ',.0f')}; worker RSS second half max/min "
            f"{_num(ratio, '.3f')} → {'flat (≤ 1.10)' if soak['rss_flat'] else 'NOT flat'}; "
            f"peak {soak['peak_rss_bytes'] / MIB:.0f} MiB"
        )
    console.print(
        "versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v is not None)
    )


def chart(result: dict[str, Any], path: Path) -> Path | None:
    """Bars per variant: events/s (with the ratio to the ceiling), CPU s/M, peak RSS."""
    variants = [v for v in result.get("variants", []) if v["events_per_second"]]
    soak = result.get("soak")
    if not variants and not soak:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return None
    if soak:
        fig, ax = plt.subplots(figsize=(8, 4))
        xs = [s["seconds"] / 60 for s in soak["samples"]]
        ax.plot(xs, [s["rss_bytes"] / MIB for s in soak["samples"]], marker=".")
        ax.set_xlabel("minutes")
        ax.set_ylabel("worker RSS (MiB)")
        ax.set_ylim(bottom=0)
        ax.set_title(f"soak: {soak['rate']:,.0f} events/s asked")
    else:
        names = [v["name"] for v in variants]
        fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
        panels = (
            ("events / s", [v["events_per_second"] for v in variants], ",.0f"),
            ("CPU s per million events", [v["cpu_seconds_per_million"] or 0 for v in variants],
             ".1f"),
            ("peak RSS (MiB)", [(v["peak_rss_bytes"] or 0) / MIB for v in variants], ".0f"),
        )
        for ax, (title, values, fmt) in zip(axes, panels, strict=True):
            bars = ax.bar(names, values, color=["#7f7f7f" if n == "ceiling" else
                                                "#1f77b4" if n == "worker" else "#ff7f0e"
                                                for n in names])
            ax.set_title(title)
            ax.tick_params(axis="x", rotation=20)
            labels = [format(value, fmt) for value in values]
            if title.startswith("events"):
                labels = [
                    f"{label}\n×{v['ratio_to_ceiling']:.2f}" if v["ratio_to_ceiling"] else label
                    for label, v in zip(labels, variants, strict=True)
                ]
            ax.bar_label(bars, labels=labels, fontsize=8)
            if not title.startswith("peak") and min(values) > 0 and max(values) / min(values) > 30:
                ax.set_yscale("log")  # the peers are orders of magnitude apart
                ax.set_ylim(bottom=min(values) / 3, top=max(values) * 8)
            else:
                ax.margins(y=0.2)
            ax.yaxis.set_major_formatter(
                matplotlib.ticker.FuncFormatter(lambda v, _: format(v, ",.0f") if v >= 1 else f"{v:g}")
            )
        preload = result.get("preload") or {}
        fig.suptitle(
            f"{preload.get('events', 0):,} events, {preload.get('partitions', '?')} partitions, "
            f"{result['machine']['cpus']} CPUs — {result['started_at']}"
        )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
