"""PromQL over the event-time history, derived from the expressions over the live gauges.

The history stage (``streams/history``) writes every closed window, summed over all its
owners, into Prometheus with one sample per series stamped at the window's end: the
``messaging_eventtime_*`` series. The live gauges (``messaging_*``, each worker's last
closed window, scraped at wall time) stay for the alerts and the recording rules of
``prometheus/recording_rules.yml``. A graph wants the same definitions over the exact
series, so :func:`from_rule` derives a rule's expression for the history by renaming its
inputs: the definition lives once, in the rule file.

How a gauge is read at an instant ``t`` (:func:`over_history`): ``last_over_time`` over
:data:`HOLD`, i.e. the newest window ending at or before ``t``. Every series of a
resolution is written at every window end (zeros included), so all the series an
expression reads come from the same window. The hold covers the delay between a
window's end and its write (lateness, assembly), and windows longer than Prometheus'
5-minute look-back (days, hours, long or compressed minute windows); a window no owner
had any data for is not written, and the one before it is held in its place.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache
from pathlib import Path

from streams.catalogue import FLAGGED_SENDERS, RESOLUTIONS, window_samples
from streams.history.assembly import event_time_name

ROOT = Path(__file__).resolve().parents[1]
RECORDING_RULES_PATH = ROOT / "prometheus" / "recording_rules.yml"

# how far back an instant looks for its window's sample: one window plus slack
HOLD = {"minute": "1h", "hour": "2h", "day": "1d1h"}
# The windows that ended in the 24 hours up to an instant, every one once. Prometheus 2
# (Debian's 2.42, compose's 2.55) selects a range with both ends included, so [1d] holds
# one window too many whenever the instant falls on a window end, as Grafana's aligned
# steps do; one millisecond short of a day holds exactly a day of windows, of any length
# that divides a day. (Prometheus 3 makes ranges left-open: there, [1d] is the exact one.)
LAST_DAY = "23h59m59s999ms"
# the board's template variables: label -> matcher
FILTERS = {"platform": 'platform=~"$platform"', "channel": 'channel=~"$channel"'}

_LIVE = re.compile(r"(?<![\w:])(messaging_[A-Za-z0-9_]*)(\{[^}]*\})?")


@cache
def families() -> dict[str, tuple[str, frozenset[str]]]:
    """Every event-time sample name -> (its resolution, its label names): what the
    history writes (the window-end gauges and the risk stage's flagged senders are not
    written; cohorts are not windows)."""
    found: dict[str, tuple[str, set[str]]] = {}
    for resolution in RESOLUTIONS:
        for name, labels, _ in window_samples({}, None, resolution, every_series=True):
            if name != FLAGGED_SENDERS:
                found.setdefault(event_time_name(name), (resolution, set()))[1].update(labels)
    return {name: (resolution, frozenset(labels))
            for name, (resolution, labels) in found.items()}


@cache
def recording_rules(path: Path = RECORDING_RULES_PATH) -> dict[str, str]:
    """``record`` -> ``expr`` (whitespace folded to single spaces)."""
    import yaml  # a dev dependency, as for the thresholds

    groups = yaml.safe_load(path.read_text())["groups"]
    return {rule["record"]: " ".join(rule["expr"].split())
            for group in groups for rule in group["rules"] if "record" in rule}


def _inputs(expr: str) -> list[str]:
    """The event-time families the live expression ``expr`` reads (each must exist)."""
    if "messaging:" in expr:
        raise ValueError(f"reads a recording rule, not gauges: {expr}")
    if "[" in expr:
        raise ValueError(f"already has a range selector: {expr}")
    names = [event_time_name(match.group(1)) for match in _LIVE.finditer(expr)]
    missing = [name for name in names if name not in families()]
    if missing or not names:
        raise ValueError(f"not in the event-time history: {missing or expr}")
    return names


def filters_of(expr: str) -> tuple[str, ...]:
    """The board filters an expression over the history takes: a label every input
    carries (a ratio filtered on one side only would be wrong)."""
    inputs = _inputs(expr)
    return tuple(label for label in FILTERS
                 if all(label in families()[name][1] for name in inputs))


def over_history(expr: str, *, function: str = "last_over_time",
                 range_: str | None = None) -> str:
    """``expr``, PromQL over live window gauges, over their event-time series: each
    input renamed, read with ``function`` over ``range_`` (default: its resolution's
    :data:`HOLD`), and filtered by the board's variables where :func:`filters_of` says."""
    filters = [FILTERS[label] for label in filters_of(expr)]

    def replace(match: re.Match[str]) -> str:
        name = event_time_name(match.group(1))
        matchers = [m.strip() for m in (match.group(2) or "{}")[1:-1].split(",") if m.strip()]
        matchers += [f for f in filters if f not in matchers]
        selector = f"{name}{{{', '.join(matchers)}}}" if matchers else name
        return f"{function}({selector}[{range_ or HOLD[families()[name][0]]}])"

    return _LIVE.sub(replace, expr)


def from_rule(record: str, rules: Mapping[str, str] | None = None, **options: str) -> str:
    """The recording rule ``record``'s expression over the event-time history."""
    expr = (recording_rules() if rules is None else rules)[record]
    return over_history(expr, **options)


def event_time_names() -> set[str]:
    """Every ``messaging_eventtime_*`` name a query or a page may use: the sample names,
    and the family names of the gauge histograms."""
    samples = set(families())
    histograms = {name.removesuffix("_bucket") for name in samples if name.endswith("_bucket")}
    return samples | histograms
