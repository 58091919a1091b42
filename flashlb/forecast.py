"""Forecast the next window: turn the episodes of the last window into weighted scenarios.

A placement serves the steps *after* the window it was planned on. The solver's objective is
the weighted mean over scenarios of the per-scenario peak/avg; this module decides what those
scenarios are and how much each weighs, from the episodes alone (pure tensor functions):

1. **Regime changes.** Per layer, the latest change point (the split of the window whose two
   means differ most, measured against the noise between consecutive episodes) - episodes
   before it describe a popularity that is gone, and weigh 0.
2. **Level.** The next window's expected share of each expert: a recency-weighted mean of the
   episodes after the change point (``level_half_life``).
3. **Noise.** Each kept episode becomes one scenario: the level plus that episode's deviation
   from the mean of its segment, so the plan stays robust to the noise between episodes
   (the multi-episode objective) while aiming at where the loads are going.

Scenarios are in token units (each layer's scenarios sum to its mean tokens per episode).
"""

from __future__ import annotations

import torch

__all__ = ["shares", "change_points", "recency_weights", "forecast_scenarios", "DEFAULT"]

# The default of flashlb.plan(forecast=...), chosen by bench/serving.py --tune on held-out
# seeds of every regime of flashlb.synthetic.
DEFAULT = {"change_threshold": 3.0, "level_half_life": 4.0}


def shares(episodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """episodes [T, L, N] -> (shares [T, L, N], live [T, L]): each episode's loads as fractions
    of its layer's total; episodes without load have zero shares and are not live."""
    tot = episodes.sum(-1, keepdim=True)
    live = tot.squeeze(-1) > 0
    return torch.where(tot > 0, episodes / torch.where(tot > 0, tot, torch.ones_like(tot)),
                       torch.zeros_like(episodes)), live


def change_points(s: torch.Tensor, live: torch.Tensor, *, threshold: float,
                  min_segment: int = 2) -> torch.Tensor:
    """Per layer, the first episode after the latest regime change, or 0 (no change).

    s: [T, L, N] shares, live: [T, L] -> [L] int64. For every split k, the L1 distance between
    the mean shares before and after k is divided by what noise alone would give (the median
    L1 distance between consecutive live episodes, scaled by sqrt(1/k + 1/(T-k)) / sqrt(2)); the
    largest such score above ``threshold`` marks a change. Both sides keep ``min_segment``
    live episodes.
    """
    T, L, N = s.shape
    out = torch.zeros(L, dtype=torch.int64)
    if T < 2 * min_segment:
        return out
    lv = live.to(s.dtype).unsqueeze(-1)  # [T, L, 1]
    csum = (s * lv).cumsum(0)  # [T, L, N]
    ccnt = lv.cumsum(0)  # [T, L, 1]
    total, count = csum[-1], ccnt[-1]
    step = (s[1:] - s[:-1]).abs().sum(-1)  # [T-1, L]
    both = live[1:] & live[:-1]
    step = torch.where(both, step, torch.full_like(step, float("nan")))
    noise = step.nanmedian(0).values / 2 ** 0.5  # [L]: L1 noise of one episode's shares
    best = torch.full((L,), -1.0, dtype=s.dtype)
    for k in range(1, T):
        nb, na = ccnt[k - 1], count - ccnt[k - 1]  # [L, 1] live episodes before / after
        ok = (nb.squeeze(-1) >= min_segment) & (na.squeeze(-1) >= min_segment)
        before = csum[k - 1] / nb.clamp_min(1)
        after = (total - csum[k - 1]) / na.clamp_min(1)
        dist = (before - after).abs().sum(-1)
        scale = noise * (1 / nb.squeeze(-1).clamp_min(1) + 1 / na.squeeze(-1).clamp_min(1)).sqrt()
        z = torch.where(ok & (scale > 0), dist / torch.where(scale > 0, scale, torch.ones_like(scale)),
                        torch.full_like(dist, -1.0))
        z = torch.nan_to_num(z, nan=-1.0)
        take = (z > threshold) & (z >= best)
        out = torch.where(take, torch.full_like(out, k), out)
        best = torch.where(take, z, best)
    return out


def recency_weights(start: torch.Tensor, live: torch.Tensor,
                    half_life: float | None) -> torch.Tensor:
    """[T, L] weights summing to 1 per layer (0 for a layer without live episodes): episodes
    from ``start [L]`` on, live ones only, the latest weighing more with ``half_life``
    (episodes; None: equal)."""
    T, L = live.shape
    idx = torch.arange(T).unsqueeze(1)
    keep = (idx >= start.unsqueeze(0)) & live
    age = (T - 1 - idx).to(torch.float64).expand(T, L)
    w = torch.ones(T, L, dtype=torch.float64) if half_life is None else torch.pow(0.5, age / half_life)
    w = w * keep
    tot = w.sum(0, keepdim=True)
    return torch.where(tot > 0, w / torch.where(tot > 0, tot, torch.ones_like(tot)), w)


def forecast_scenarios(episodes: torch.Tensor, *, change_threshold: float | None = 3.0,
                       level_half_life: float | None = 4.0,
                       min_segment: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Scenarios of the next window from the episodes of the last one.

    episodes: [T, L, N] float64 loads. change_threshold: the score above which a layer's
    episodes before its latest change point are dropped (None: never). level_half_life:
    episodes; the forecast level weighs the latest ones more (None: the plain mean, which
    leaves the episodes as they are). Returns (scenarios [T, L, N], weights [T, L]): one
    scenario per episode, weights summing to 1 per layer (0 for dropped or empty episodes).
    """
    h = episodes.to(torch.float64)
    T, L, N = h.shape
    s, live = shares(h)
    if change_threshold is None:
        start = torch.zeros(L, dtype=torch.int64)
    else:
        start = change_points(s, live, threshold=float(change_threshold), min_segment=min_segment)
    w = recency_weights(start, live, None)  # [T, L]: the segment, equally
    seg_mean = (s * w.unsqueeze(-1)).sum(0)  # [L, N]
    if level_half_life is None:
        level = seg_mean
    else:
        lw = recency_weights(start, live, float(level_half_life))
        level = (s * lw.unsqueeze(-1)).sum(0)
    scen = (level + (s - seg_mean)).clamp_min(0)
    scen = scen / scen.sum(-1, keepdim=True).clamp_min(1e-300)
    tokens = (h.sum(-1) * live).sum(0) / live.sum(0).clamp_min(1)  # [L] mean tokens per live episode
    scen = torch.where((w > 0).unsqueeze(-1), scen * tokens.view(1, L, 1), torch.zeros_like(scen))
    return scen, w
