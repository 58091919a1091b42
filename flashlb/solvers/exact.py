"""Exact solver for small instances: branch and bound over replica counts and placements.

The yardstick for the optimality gap of FlashLB in tests and benchmarks. It minimises the
same objective - the weighted mean over episodes of peak/avg device load - under the same
rules (every expert >= 1 replica, exactly P / D slots per device, no expert twice on a device).
Exponential: meant for a dozen slots or so.

Written apart from the solver on purpose: plain Python over lists, its own normalisation of
episodes, nothing imported from flashlb.objective or the solvers, so a slip in the solver's
objective cannot hide in the yardstick too.
"""

from __future__ import annotations

import torch

from .._checks import as_hotness, check_sizes
from ..placement import Placement

__all__ = ["exact_plan", "exact_layer"]


def _compositions(N: int, P: int, D: int):
    """Every count vector with 1 <= c[e] <= D and sum P."""
    def rec(e, left):
        if e == N - 1:
            if 1 <= left <= D:
                yield (left,)
            return
        rest = N - 1 - e
        for c in range(max(1, left - rest * D), min(D, left - rest) + 1):
            for tail in rec(e + 1, left - c):
                yield (c,) + tail
    yield from rec(0, P)


def exact_layer(w: list[list[float]], ew: list[float], P: int, D: int,
                upper: float = float("inf"),
                counts: list[int] | None = None) -> tuple[float, list[int] | None]:
    """Optimum of one layer.

    w: [T][N] loads normalised so each episode's device average is 1; ew: [T] weights.
    counts: [N] replica counts to keep fixed, or None to search them too.
    Returns (objective, phy2log as a list of P ids) or (upper, None) if nothing beats ``upper``.
    """
    T, N = len(w), len(w[0])
    S = P // D
    active = [t for t in range(T) if ew[t] > 0]
    floor = sum(ew[t] for t in active)  # the peak is at least the average, 1 per episode
    best = [upper, None]

    def count_bound(c):
        return sum(ew[t] * max(1.0, max(w[t][e] / c[e] for e in range(N))) for t in active)

    cands = [tuple(counts)] if counts is not None else sorted(_compositions(N, P, D), key=count_bound)
    for c in cands:
        if count_bound(c) >= best[0] - 1e-12:
            break
        key = [sum(ew[t] * w[t][e] for t in active) / c[e] for e in range(N)]
        experts = sorted(range(N), key=lambda e: (-key[e], e))
        items = [e for e in experts for _ in range(c[e])]
        rep = [[w[t][e] / c[e] for t in range(T)] for e in range(N)]
        load = [[0.0] * T for _ in range(D)]
        fill = [0] * D
        held = [set() for _ in range(D)]
        where = [0] * P

        def bound():
            return sum(ew[t] * max(1.0, max(load[d][t] for d in range(D))) for t in active)

        def place(k, used, last_dev):
            if bound() >= best[0] - 1e-12:
                return
            if k == P:
                best[0] = bound()
                slots = [[] for _ in range(D)]
                for idx, e in enumerate(items):
                    slots[where[idx]].append(e)
                best[1] = [e for d in range(D) for e in slots[d]]
                return
            e = items[k]
            same = k > 0 and items[k - 1] == e
            lo = last_dev + 1 if same else 0
            for d in range(lo, min(used + 1, D)):
                if fill[d] == S or e in held[d]:
                    continue
                fill[d] += 1
                held[d].add(e)
                for t in range(T):
                    load[d][t] += rep[e][t]
                where[k] = d
                place(k + 1, max(used, d + 1), d)
                for t in range(T):
                    load[d][t] -= rep[e][t]
                held[d].discard(e)
                fill[d] -= 1

        place(0, 0, -1)
        if best[0] <= floor + 1e-12:
            break
    return best[0], best[1]


def scale_episodes(hotness: list[list[float]], weights: list[float],
                   num_devices: int) -> tuple[list[list[float]], list[float]]:
    """One layer's episodes scaled to a device average of 1, and their weights.

    hotness: [T][N] loads, weights: [T] (any non-negative). Episodes without load are dropped
    from the weights (weight 0), the others renormalised to sum 1.
    """
    loads, kept = [], []
    for row, wt in zip(hotness, weights):
        total = sum(row)
        loads.append([num_devices * x / total for x in row] if total > 0 else [0.0] * len(row))
        kept.append(wt if total > 0 else 0.0)
    norm = sum(kept)
    return loads, [k / norm for k in kept] if norm > 0 else kept


def exact_plan(hotness: torch.Tensor, num_physical: int, num_devices: int, *,
               weights: torch.Tensor | None = None) -> tuple[Placement, torch.Tensor]:
    """Optimal placement of every layer (small instances only).

    hotness: [L, N] or [T, L, N]; weights: optional [T] episode weights (uniform when None).
    Returns (Placement, objective [L]) where the objective is the weighted mean over the
    episodes with load of peak/avg (0 for a layer without load).
    """
    h = as_hotness(hotness).cpu()
    T, L, N = h.shape
    P, D = check_sizes(N, num_physical, num_devices)
    wt = [1.0] * T if weights is None else [float(x) for x in torch.as_tensor(weights).reshape(-1)]
    if len(wt) != T:
        raise ValueError(f"weights must have one entry per episode ({T}), got {len(wt)}")
    phys, objs = [], []
    for layer in range(L):
        loads, ew = scale_episodes(h[:, layer].tolist(), wt, D)
        # Every count vector with counts <= D and S <= N has a placement, so one is found.
        obj, phy = exact_layer(loads, ew, P, D)
        phys.append(phy)
        objs.append(obj)
    return Placement.from_phy2log(torch.tensor(phys), N, D), torch.tensor(objs, dtype=torch.float64)
