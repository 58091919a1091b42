"""The objective every flashlb solver minimises, and the pieces it is built from.

A window of loads ``hotness [T, L, N]`` is T episodes. Each episode of a layer is scaled so
its device average is 1 (``normalise_episodes``); the quality of a placement of that layer is
the weighted mean over episodes of its peak device load (``weighted_peak_ratio``), i.e. of the
per-episode peak/avg. Episodes without load weigh 0. ``allot_replicas`` is the min-max replica
allotment the solvers start from and the lower bounds use.

This module sits at the bottom of the package: it imports nothing from flashlb but the input
checks, so metrics and solvers can share it without importing each other.
"""

from __future__ import annotations

import torch

from ._checks import check_int

__all__ = ["episode_weights", "normalise_episodes", "weighted_peak_ratio", "allot_replicas"]


def episode_weights(num_episodes: int, recency_half_life: float | None = None) -> torch.Tensor:
    """[T] weights summing to 1; with a half-life (in episodes) the latest episodes weigh more."""
    T = check_int(num_episodes, "num_episodes")
    if recency_half_life is None:
        return torch.full((T,), 1.0 / T, dtype=torch.float64)
    if not (isinstance(recency_half_life, (int, float)) and not isinstance(recency_half_life, bool)
            and 0 < recency_half_life < float("inf")):
        raise ValueError(f"recency_half_life must be a positive number, got {recency_half_life!r}")
    age = torch.arange(T - 1, -1, -1, dtype=torch.float64)
    w = torch.pow(0.5, age / float(recency_half_life))
    return w / w.sum()


def normalise_episodes(hotness: torch.Tensor, num_devices: int,
                       weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Loads scaled so each episode's device average is 1, and per-layer episode weights.

    hotness: [T, L, N] float64, weights: [T] (or per layer [T, L]) -> (loads [L, T, N],
    episode_weights [L, T]).
    A layer's weights are ``weights`` restricted to its episodes with load, renormalised to
    sum 1; a layer without any load gets all-zero weights (and all-zero loads).
    """
    # Each episode at scale 1 (its largest load) before summing: sums of loads near 1e308
    # do not overflow, subnormal ones keep their precision, and no D / total overflows.
    m = hotness.amax(-1, keepdim=True)  # [T, L, 1]
    live = m[..., 0] > 0  # [T, L]
    hotness = hotness / torch.where(m > 0, m, torch.ones_like(m))
    total = hotness.sum(-1, keepdim=True)  # >= 1 where live
    ew = (weights.to(hotness).unsqueeze(1) if weights.dim() == 1 else weights.to(hotness)) * live
    norm = ew.sum(0, keepdim=True)
    ew = torch.where(norm > 0, ew / torch.where(norm > 0, norm, torch.ones_like(norm)), ew)
    loads = hotness / torch.where(total > 0, total, torch.ones_like(total)) * num_devices
    return loads.permute(1, 0, 2).contiguous(), ew.t().contiguous()


def weighted_peak_ratio(phy2log: torch.Tensor, loads: torch.Tensor, episode_weights: torch.Tensor,
                        num_devices: int) -> torch.Tensor:
    """The objective: sum_t episode_weights[b, t] * max_d device_load[b, t, d].

    phy2log: [B, P] int64, loads: [B, T, N] normalised (``normalise_episodes``),
    episode_weights: [B, T] -> [B] float64.
    """
    B, T, N = loads.shape
    counts = torch.zeros(B, N, dtype=torch.float64).scatter_add_(
        1, phy2log, torch.ones(phy2log.shape, dtype=torch.float64))
    per_replica = loads / counts.clamp_min(1).unsqueeze(1)
    slot = per_replica.gather(2, phy2log.unsqueeze(1).expand(B, T, -1))
    peak = slot.view(B, T, num_devices, -1).sum(-1).amax(-1)
    return (peak * episode_weights).sum(-1)


def allot_replicas(weight: torch.Tensor, num_physical: int, max_replicas: int) -> torch.Tensor:
    """Min-max-replica allotment with a cap.

    weight: [X, N] float -> counts [X, N] int64 with 1 <= counts <= max_replicas and rows
    summing to num_physical. Each extra replica goes to the expert with the largest
    per-replica load among those below the cap, which minimises the largest per-replica load.
    Ties go to the lowest expert id. Needs N <= num_physical <= N * max_replicas.
    """
    X, N = weight.shape
    w = weight.to(torch.float64)
    counts = torch.ones(X, N, dtype=torch.int64)
    rows = torch.arange(X)
    capped = torch.full_like(w, -1.0)
    for _ in range(num_physical - N):
        per_replica = torch.where(counts < max_replicas, w / counts, capped)
        counts[rows, per_replica.argmax(-1)] += 1
    return counts
