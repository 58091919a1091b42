"""Quality measures of a placement: device loads, peak/average ratios, lower bounds, moves.

A replica carries ``load / replica count`` of its expert; a device's load is the sum over its
slots. Quality is the peak/average device load, per episode, averaged over episodes, then layers.
"""

from __future__ import annotations

import torch

from ._checks import as_hotness, check_int
from .placement import Placement
from .solvers.allotment import allot_replicas

__all__ = [
    "device_loads",
    "peak_avg_ratio",
    "balance_ratio",
    "lower_bound_peak",
    "min_max_replica_load",
    "moves",
    "episode_weights",
]


def _phy2log(placement) -> tuple[torch.Tensor, int, int]:
    if isinstance(placement, Placement):
        return placement.phy2log, placement.num_devices, placement.num_experts
    raise TypeError("placement must be a flashlb.Placement")


def device_loads(placement: Placement, hotness: torch.Tensor) -> torch.Tensor:
    """Per-device loads.

    placement: L layers; hotness: [L, N] or [T, L, N].  Returns [L, D] or [T, L, D] (float64).
    """
    phy, D, N = _phy2log(placement)
    squeeze = isinstance(hotness, torch.Tensor) and hotness.dim() == 2
    h = as_hotness(hotness)
    T, L, Nh = h.shape
    if (L, Nh) != (phy.shape[0], N):
        raise ValueError(
            f"hotness has {L} layers x {Nh} experts but the placement has "
            f"{phy.shape[0]} layers x {N} experts")
    phy = phy.to(h.device)
    cnt = placement.logcnt.to(h.device).to(torch.float64).clamp_min(1)
    per_replica = h / cnt  # [T, L, N]
    slot = per_replica.gather(2, phy.unsqueeze(0).expand(T, -1, -1))  # [T, L, P]
    loads = slot.view(T, L, D, -1).sum(-1)
    return loads[0] if squeeze else loads


def peak_avg_ratio(loads: torch.Tensor) -> torch.Tensor:
    """loads: [..., D] -> [...] peak / mean; 1.0 where the average is 0 (nothing to balance)."""
    avg = loads.mean(-1)
    peak = loads.amax(-1)
    return torch.where(avg > 0, peak / torch.where(avg > 0, avg, torch.ones_like(avg)),
                       torch.ones_like(avg))


def balance_ratio(placement: Placement, hotness: torch.Tensor,
                  weights: torch.Tensor | None = None) -> torch.Tensor:
    """[L] per-layer quality: per-episode peak/avg, averaged over episodes.

    hotness: [L, N] or [T, L, N]; weights: optional [T] episode weights (normalised here).
    Episodes in which a layer has no load count as 1.0.
    """
    r = peak_avg_ratio(device_loads(placement, hotness))
    if r.dim() == 1:
        return r
    if weights is None:
        return r.mean(0)
    w = weights.to(r).reshape(-1, 1)
    return (r * w).sum(0) / w.sum()


def episode_weights(num_episodes: int, recency_half_life: float | None = None) -> torch.Tensor:
    """[T] weights summing to 1; with a half-life (in episodes) the latest episodes weigh more."""
    T = check_int(num_episodes, "num_episodes")
    if recency_half_life is None:
        return torch.full((T,), 1.0 / T, dtype=torch.float64)
    if not (isinstance(recency_half_life, (int, float)) and recency_half_life > 0):
        raise ValueError(f"recency_half_life must be a positive number, got {recency_half_life!r}")
    age = torch.arange(T - 1, -1, -1, dtype=torch.float64)
    w = torch.pow(0.5, age / float(recency_half_life))
    return w / w.sum()


def min_max_replica_load(hotness: torch.Tensor, num_physical: int, num_devices: int) -> torch.Tensor:
    """Smallest achievable largest per-replica load, with at most D replicas per expert.

    hotness: [..., N] -> [...]. Giving each new replica to the expert with the largest
    per-replica load is optimal for this min-max objective.
    """
    h = hotness.to(torch.float64)
    flat = h.reshape(-1, h.shape[-1])
    cnt = allot_replicas(flat, int(num_physical), int(num_devices))
    return (flat / cnt).amax(-1).reshape(h.shape[:-1])


def lower_bound_peak(hotness: torch.Tensor, num_physical: int, num_devices: int) -> torch.Tensor:
    """A lower bound on the best achievable peak device load.

    hotness: [L, N] (or [T, L, N], bounded per episode) -> [L] (or [T, L]). The peak is at
    least the average device load and at least the best min-max per-replica load.
    """
    h = as_hotness(hotness)
    avg = h.sum(-1) / num_devices
    lb = torch.maximum(avg, min_max_replica_load(h, num_physical, num_devices))
    return lb[0] if hotness.dim() == 2 else lb


def moves(old: Placement, new: Placement) -> torch.Tensor:
    """[L] number of physical slots whose expert changed (each is one expert weight transfer)."""
    if old.phy2log.shape != new.phy2log.shape:
        raise ValueError(
            f"placements differ in shape: {tuple(old.phy2log.shape)} vs {tuple(new.phy2log.shape)}")
    return (old.phy2log.cpu() != new.phy2log.cpu()).sum(1)
