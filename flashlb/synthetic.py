"""Synthetic expert-load traces: skewed, drifting, noisy, reproducible from a seed."""

from __future__ import annotations

import torch

from ._checks import check_int

__all__ = ["drifting_trace"]


def drifting_trace(num_episodes: int, num_layers: int, num_experts: int, *,
                   tokens_per_episode: int = 16 * 2048 * 8, skew: float = 1.0,
                   drift: float = 0.15, burst: float = 0.3, seed: int = 0) -> torch.Tensor:
    """Per-episode token counts ``[T, L, N]`` (float64, integer-valued).

    Each layer's expert popularity is log-normal with spread ``skew``; it drifts as a random
    walk in log space (``drift`` per episode), each episode adds short-lived bursts (``burst``)
    and the tokens are drawn as Poisson counts, so episodes share a trend but differ.
    """
    T = check_int(num_episodes, "num_episodes")
    L = check_int(num_layers, "num_layers")
    N = check_int(num_experts, "num_experts")
    g = torch.Generator().manual_seed(int(seed))
    logit = torch.randn(L, N, generator=g, dtype=torch.float64) * skew
    out = torch.empty(T, L, N, dtype=torch.float64)
    for t in range(T):
        logit = logit + torch.randn(L, N, generator=g, dtype=torch.float64) * drift
        noisy = logit + torch.randn(L, N, generator=g, dtype=torch.float64) * burst
        p = torch.softmax(noisy, dim=-1)
        out[t] = torch.poisson(p * tokens_per_episode, generator=g)
    return out
