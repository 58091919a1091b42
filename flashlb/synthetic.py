"""Synthetic expert-load traces: skewed, drifting, noisy, reproducible from a seed."""

from __future__ import annotations

import torch

from ._checks import check_int

__all__ = ["drifting_trace", "small_instance", "SMALL_KINDS"]


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


SMALL_KINDS = ("uniform", "skew", "heavy-skew", "one-hot", "ties", "integer", "idle-episode")


def small_instance(seed: int, *, max_slots: int = 12) -> tuple[torch.Tensor, int, int, str]:
    """A small placement problem from a broad family, for checks against an exact solver.

    Returns (hotness [T, 1, N] float64, num_physical P, num_devices D, kind). Up to 6 devices,
    1 to 4 slots per device (P <= max_slots), S <= N <= P experts, 1 to 4 episodes, and loads
    of one kind: uniform, skewed (cubed), heavily skewed (sixth power), one hot expert, ties
    (few distinct small integers), small integer counts, or an episode without load.
    """
    g = torch.Generator().manual_seed(int(seed))

    def pick(options):
        return options[int(torch.randint(len(options), (1,), generator=g))]

    D = pick([d for d in (1, 2, 3, 4, 6) if d <= max_slots])
    S = pick([s for s in (1, 2, 3, 4) if D * s <= max_slots])
    P = D * S
    N = int(torch.randint(S, P + 1, (1,), generator=g))
    T = pick([1, 2, 3, 4])
    kind = pick(SMALL_KINDS)
    u = torch.rand(T, 1, N, generator=g, dtype=torch.float64)
    if kind == "uniform":
        h = u * 100
    elif kind == "skew":
        h = (u ** 3 * 100).round()
    elif kind == "heavy-skew":
        h = u ** 6 * 1000
    elif kind == "one-hot":
        h = u * 5
        h[:, 0, int(torch.randint(N, (1,), generator=g))] += 100
    elif kind == "ties":
        h = torch.randint(1, 4, (T, 1, N), generator=g).to(torch.float64)
    elif kind == "integer":
        h = torch.randint(0, 12, (T, 1, N), generator=g).to(torch.float64)
    else:  # idle-episode: the first episode carries no load
        h = u * 100
        h[0] = 0
    return h, P, D, kind
