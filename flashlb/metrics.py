"""Quality measures of a placement: device loads, peak/average ratios, lower bounds, moves.

A replica carries ``load / replica count`` of its expert; a device's load is the sum over its
slots. Quality is the peak/average device load, per episode, averaged over episodes, then layers.
"""

from __future__ import annotations

import torch

from ._checks import as_hotness, check_int, check_sizes, check_tensor, scaled_to_max
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
    """loads: [..., D] -> [...] peak / mean; 1.0 where the average is 0 (nothing to balance).

    Computed as 1 / mean(loads / peak), which neither overflows nor loses subnormal loads.
    """
    check_tensor(loads, "loads")
    if loads.dim() < 1 or loads.shape[-1] == 0:
        raise ValueError(f"loads must be [..., D] with D >= 1, got shape {tuple(loads.shape)}")
    x = loads if loads.is_floating_point() else loads.to(torch.float64)
    peak = x.amax(-1, keepdim=True)
    rel = (x / torch.where(peak > 0, peak, torch.ones_like(peak))).mean(-1)
    return torch.where(rel > 0, 1.0 / torch.where(rel > 0, rel, torch.ones_like(rel)), torch.ones_like(rel))


def _episode_mean(ratio: torch.Tensor, live: torch.Tensor, weights) -> torch.Tensor:
    """ratio, live: [T, L] -> [L] weighted mean over the live episodes of each layer.

    weights: optional [T] (uniform when None). A layer with no live episode gets 1.0.
    """
    if weights is None:
        w = torch.ones(ratio.shape[0], dtype=torch.float64)
    else:
        if isinstance(weights, torch.Tensor):
            check_tensor(weights, "weights")
            if weights.is_complex():
                raise ValueError(f"weights must be real numbers, got {weights.dtype}")
        try:
            w = torch.as_tensor(weights, dtype=torch.float64).reshape(-1).cpu()
        except (TypeError, ValueError, RuntimeError):
            raise ValueError("weights must be [T] numbers") from None
        if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
            raise ValueError("weights must be finite and >= 0")
        w = w / torch.where(w.amax() > 0, w.amax(), torch.ones(()))  # no overflow in the sums
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
    _phy2log(placement)
    loads = device_loads(placement, scaled_to_max(as_hotness(hotness)))  # ratios ignore scale
    return _episode_mean(peak_avg_ratio(loads), loads.sum(-1) > 0, weights)


def lower_bound_ratio(hotness: torch.Tensor, num_physical: int, num_devices: int,
                      weights: torch.Tensor | None = None) -> torch.Tensor:
    """[L] a lower bound on :func:`balance_ratio` of any duplicate-free placement.

    hotness: [L, N] or [T, L, N]. Each episode is bounded on its own
    (:func:`lower_bound_peak` / average) and the bounds are averaged exactly as
    :func:`balance_ratio` averages the ratios, so the two can be printed side by side.
    """
    h = scaled_to_max(as_hotness(hotness))  # ratios ignore scale; sums do not overflow
    P, D = check_sizes(h.shape[-1], num_physical, num_devices)
    avg = h.sum(-1) / D  # [T, L]
    lb = lower_bound_peak(h, P, D)
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
    check_tensor(hotness, "hotness")
    if hotness.dim() < 1 or hotness.shape[-1] == 0:
        raise ValueError(f"hotness must be [..., N] with N >= 1, got shape {tuple(hotness.shape)}")
    h = as_hotness(hotness.reshape(-1, 1, hotness.shape[-1]))[:, 0]  # [X, N]; finite, >= 0
    P, D = check_sizes(h.shape[-1], num_physical, num_devices)
    m = h.amax(-1, keepdim=True)
    m = torch.where(m > 0, m, torch.ones_like(m))
    cnt = allot_replicas(h / m, P, D)
    return ((h / m / cnt).amax(-1) * m[:, 0]).reshape(hotness.shape[:-1])


def lower_bound_peak(hotness: torch.Tensor, num_physical: int, num_devices: int) -> torch.Tensor:
    """A lower bound on the best achievable peak device load.

    hotness: [L, N] (or [T, L, N], bounded per episode) -> [L] (or [T, L]). The peak is at
    least the average device load and at least the best min-max per-replica load. Each row is
    computed at scale 1 (its largest load) and scaled back, so only a bound that itself
    exceeds the float64 range is inf.
    """
    h = as_hotness(hotness)
    P, D = check_sizes(h.shape[-1], num_physical, num_devices)
    m = h.amax(-1, keepdim=True)
    m = torch.where(m > 0, m, torch.ones_like(m))
    hs = h / m
    lb = torch.maximum(hs.sum(-1) / D, min_max_replica_load(hs, P, D)) * m[..., 0]
    return lb[0] if hotness.dim() == 2 else lb


def moves(old: Placement, new: Placement) -> torch.Tensor:
    """[L] number of physical slots whose expert changed (each is one expert weight transfer)."""
    _phy2log(old)
    _phy2log(new)
    if old.phy2log.shape != new.phy2log.shape:
        raise ValueError(
            f"placements differ in shape: {tuple(old.phy2log.shape)} vs {tuple(new.phy2log.shape)}")
    return (old.phy2log.cpu() != new.phy2log.cpu()).sum(1)
