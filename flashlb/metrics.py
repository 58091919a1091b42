"""Quality measures of a placement: device loads, peak/average ratios, lower bounds, moves.

A replica carries ``load / replica count`` of its expert; a device's load is the sum over its
slots. Quality is the peak/average device load, per episode, averaged over episodes, then layers.
"""

from __future__ import annotations

import torch

from ._checks import as_hotness, check_int
from .objective import allot_replicas, episode_weights
from .placement import Placement

__all__ = [
    "device_loads",
    "peak_avg_ratio",
    "balance_ratio",
    "lower_bound_peak",
    "lower_bound_ratio",
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


def _episode_mean(ratio: torch.Tensor, live: torch.Tensor, weights) -> torch.Tensor:
    """ratio, live: [T, L] -> [L] weighted mean over the live episodes of each layer.

    weights: optional [T] (uniform when None). A layer with no live episode gets 1.0.
    """
    w = torch.ones(ratio.shape[0], dtype=torch.float64) if weights is None else \
        torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
    if w.shape[0] != ratio.shape[0]:
        raise ValueError(f"weights must have one entry per episode ({ratio.shape[0]}), got {w.shape[0]}")
    w = w.to(ratio.device).unsqueeze(1) * live
    total = w.sum(0)
    mean = (ratio * w).sum(0) / torch.where(total > 0, total, torch.ones_like(total))
    return torch.where(total > 0, mean, torch.ones_like(mean))


def balance_ratio(placement: Placement, hotness: torch.Tensor,
                  weights: torch.Tensor | None = None) -> torch.Tensor:
    """[L] per-layer quality: per-episode peak/avg, averaged over episodes.

    hotness: [L, N] or [T, L, N]; weights: optional [T] episode weights (normalised here).
    Episodes in which a layer has no load weigh 0 (a layer with no load at all gets 1.0),
    as in the solvers' objective.
    """
    loads = device_loads(placement, hotness)
    r = peak_avg_ratio(loads)
    if r.dim() == 1:
        return r
    return _episode_mean(r, loads.sum(-1) > 0, weights)


def lower_bound_ratio(hotness: torch.Tensor, num_physical: int, num_devices: int,
                      weights: torch.Tensor | None = None) -> torch.Tensor:
    """[L] a lower bound on :func:`balance_ratio` of any duplicate-free placement.

    hotness: [L, N] or [T, L, N]. Each episode is bounded on its own
    (:func:`lower_bound_peak` / average) and the bounds are averaged exactly as
    :func:`balance_ratio` averages the ratios, so the two can be printed side by side.
    """
    h = as_hotness(hotness)
    avg = h.sum(-1) / num_devices  # [T, L]
    lb = lower_bound_peak(h, num_physical, num_devices)
    if lb.dim() == 1:
        lb = lb.unsqueeze(0)
    live = avg > 0
    ratio = torch.where(live, lb / torch.where(live, avg, torch.ones_like(avg)), torch.ones_like(avg))
    return _episode_mean(ratio, live, weights)


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
