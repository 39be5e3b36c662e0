"""Balancing decisions as functions over plain lists (no I/O, no clock).

Every function picks one index out of ``eligible`` (indices of targets that are up and
not yet tried for this request, never empty). Round-robin state is the caller's list of
current weights, one int per target, updated in place, exactly as nginx keeps it in
``ngx_http_upstream_rr_peer_t.current_weight``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

__all__ = ["hash_seed", "highest_random_weight", "least_connections", "smooth_weighted"]

_MASK64 = 2**64 - 1
_UNIT_BITS = 52  # (n + 0.5) / 2**52 is exact in a float and strictly inside (0, 1)
_SCALE = float(2**_UNIT_BITS)


def smooth_weighted(weights: Sequence[int], current: list[int], eligible: Sequence[int]) -> int:
    """nginx's smooth weighted round robin: weights 5,1,1 give a a b a c a a, spread out.

    Each pick adds every eligible target's weight to its current weight, takes the
    largest, and subtracts the total from the winner. Over ``sum(weights)`` picks each
    target is chosen exactly ``weight`` times, interleaved rather than in runs.
    """
    total = 0
    best = -1
    best_current = 0
    for index in eligible:
        weight = weights[index]
        value = current[index] + weight
        current[index] = value
        total += weight
        if best < 0 or value > best_current:
            best, best_current = index, value
    current[best] = best_current - total
    return best


def least_connections(
    weights: Sequence[int],
    active: Sequence[int],
    current: list[int],
    eligible: Sequence[int],
) -> int:
    """nginx's ``least_conn``: the fewest active connections per unit of weight.

    Ties are broken by smooth weighted round robin among the tied targets, so equal
    targets with no load take turns.
    """
    tied: list[int] = []
    best_active = best_weight = 0
    for index in eligible:
        # active / weight < best_active / best_weight, without division.
        if not tied or active[index] * best_weight < best_active * weights[index]:
            tied = [index]
            best_active, best_weight = active[index], weights[index]
        elif active[index] * best_weight == best_active * weights[index]:
            tied.append(index)
    if len(tied) == 1:
        return tied[0]
    return smooth_weighted(weights, current, tied)


def hash_seed(target_id: str) -> int:
    """The per-target seed of `highest_random_weight` (stable across processes)."""
    return int.from_bytes(hashlib.blake2b(target_id.encode("utf-8"), digest_size=8).digest())


def _mix64(value: int) -> int:
    """splitmix64's finalizer: every input bit flips each output bit with probability 1/2."""
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def highest_random_weight(
    key: str, seeds: Sequence[int], weights: Sequence[int], eligible: Sequence[int]
) -> int:
    """Weighted rendezvous hashing: the target with the highest score for ``key`` wins.

    Each (target, key) pair gets a pseudo-random score (BLAKE2b of the key, mixed with
    the target's seed), the same in every process and worker. Taking a target out moves
    only the keys it had won (each goes to its own second-best target), and a target
    with twice the weight wins about twice as many keys (score ``-weight / ln(u)``, the
    weighted variant of Schindelhauer and Schomaker).
    """
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    key_hash = int.from_bytes(digest)
    best = -1
    best_score = -1.0
    for index in eligible:
        # u in (0, 1): never 0 (log) and never 1 (division by zero).
        unit = ((_mix64(key_hash ^ seeds[index]) >> (64 - _UNIT_BITS)) + 0.5) / _SCALE
        score = -weights[index] / math.log(unit)
        if score > best_score:
            best, best_score = index, score
    return best
