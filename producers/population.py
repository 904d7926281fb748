"""A seeded population of accounts: types, preferred platforms, abusers, connections.

Accounts are addressed by index internally (cheap) and by id (``m-000123``) in events.
Advertisers are company accounts: they have no connections and receive no messages.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from producers.profile import PLATFORMS, SENDER_TYPES, SimulationProfile


@dataclass(frozen=True)
class Population:
    ids: list[str]
    sender_types: list[str]
    platforms: list[str]  # preferred platform per account
    abusive: list[bool]
    connections: list[list[int]]  # undirected graph; empty for advertisers
    starter_pool: dict[str, list[int]]  # per type; abusers appear several times
    recipients: list[int]  # everyone who can receive a message

    def __len__(self) -> int:
        return len(self.ids)


def build_population(size: int, profile: SimulationProfile, rng: random.Random) -> Population:
    """Build ``size`` accounts; a pure function of its arguments and the rng state."""
    if size < 10:
        raise ValueError("a population needs at least 10 accounts")
    width = max(6, len(str(size - 1)))
    ids = [f"m-{i:0{width}d}" for i in range(size)]
    sender_types = _assign_types(size, profile, rng)
    weights = [profile.platform_shares.get(p, 0.0) for p in PLATFORMS]
    platforms = rng.choices(PLATFORMS, weights=weights, k=size)
    recipients = [i for i, t in enumerate(sender_types) if t != "advertiser"]
    abusive = [False] * size
    n_abusive = round(profile.abusive_share * size)
    for i in rng.sample(recipients, min(n_abusive, len(recipients))):
        abusive[i] = True
    connections = _connect(size, recipients, profile.mean_connections, rng)
    starter_pool = starter_pools(sender_types, abusive, profile.abusive_activity)
    return Population(
        ids=ids,
        sender_types=sender_types,
        platforms=platforms,
        abusive=abusive,
        connections=connections,
        starter_pool=starter_pool,
        recipients=recipients,
    )


def starter_pools(
    sender_types: list[str], abusive: list[bool], abusive_activity: float
) -> dict[str, list[int]]:
    """Who starts conversations, per type: abusers appear ``abusive_activity`` times.

    Deterministic (no randomness), so a scenario can rebuild the pools of the same
    population for a phase with another ``abusive_activity``.
    """
    activity = max(1, round(abusive_activity))
    pools: dict[str, list[int]] = {t: [] for t in SENDER_TYPES}
    for i, sender_type in enumerate(sender_types):
        pools[sender_type].extend([i] * (activity if abusive[i] else 1))
    return pools


def _assign_types(size: int, profile: SimulationProfile, rng: random.Random) -> list[str]:
    """Exact counts per type (every type that starts conversations gets an account)."""
    counts = {t: round(profile.account_shares.get(t, 0.0) * size) for t in SENDER_TYPES}
    for t in SENDER_TYPES:
        if profile.starter_shares.get(t, 0.0) > 0 and counts[t] == 0:
            counts[t] = 1
    counts["member"] = size - sum(c for t, c in counts.items() if t != "member")
    if counts["member"] < 1:
        raise ValueError("population too small for the configured account shares")
    types = [t for t in SENDER_TYPES for _ in range(counts[t])]
    rng.shuffle(types)
    return types


def _connect(
    size: int, nodes: list[int], mean_degree: float, rng: random.Random
) -> list[list[int]]:
    """A random undirected graph over ``nodes`` where everyone has a connection."""
    connections: list[list[int]] = [[] for _ in range(size)]
    n = len(nodes)
    if n < 2:
        return connections
    random_ = rng.random
    for _ in range(int(n * mean_degree / 2)):
        a = nodes[int(random_() * n)]
        b = nodes[int(random_() * n)]
        if a != b:
            connections[a].append(b)
            connections[b].append(a)
    for a in nodes:
        if not connections[a]:
            b = a
            while b == a:
                b = nodes[int(random_() * n)]
            connections[a].append(b)
            connections[b].append(a)
    return connections
