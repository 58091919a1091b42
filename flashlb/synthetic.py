"""Synthetic expert-load traces: skewed, drifting, noisy, reproducible from a seed.

Every trace is per-episode token counts ``[T, L, N]`` (float64, integer-valued). A trace is
built in two steps: a *popularity path* ``logits [T, L, N]`` (how each expert's log-popularity
evolves under a drift regime), then :func:`sample_counts` (episode noise in log space and
Poisson tokens), so the regimes differ only in how popularity moves:

| regime | what moves |
| --- | --- |
| ``stationary`` | nothing: one popularity per layer, episodes differ by noise only |
| ``drift`` | a slow random walk of every expert's log-popularity |
| ``swaps`` | at random moments a hot group of experts trades places with a cold group |
| ``swaps-fast`` | the same, twice as often (``swap_rate=0.16``): where fresh plans every 8 episodes serve ~1.33 |
| ``bursts`` | short surges: a few experts turn hot for a few episodes, then cool down |
| ``switch`` | one workload switch, prefill-like (flatter) to decode-like (skewed, other hot set) |

Experts move in correlated groups (``group_size`` consecutive experts share a group factor),
as experts trained on related tokens do. :func:`regime_trace` builds any regime by name; the
defaults are whole-model sizes (DeepSeek-V3: 58 MoE layers x 256 experts) and one episode of
16 steps x 4096 tokens x top-8.
"""

from __future__ import annotations

import torch

from ._checks import check_int, check_memory, check_number

__all__ = ["drifting_trace", "small_instance", "SMALL_KINDS", "regime_trace", "REGIMES", "popularity",
           "sample_counts", "stationary_trace", "drift_trace", "swap_trace", "fast_swap_trace", "burst_trace",
           "switch_trace"]

REGIMES = ("stationary", "drift", "swaps", "swaps-fast", "bursts", "switch")

TOKENS_PER_EPISODE = 16 * 4096 * 8  # 16 steps x 4096 tokens x top-8


def drifting_trace(num_episodes: int, num_layers: int, num_experts: int, *,
                   tokens_per_episode: int = 16 * 2048 * 8, skew: float = 1.0,
                   drift: float = 0.15, burst: float = 0.3, seed: int = 0) -> torch.Tensor:
    """Per-episode token counts ``[T, L, N]`` (float64, integer-valued).

    Each layer's expert popularity is log-normal with spread ``skew``; it drifts as a random
    walk in log space (``drift`` per episode), each episode adds short-lived bursts (``burst``)
    and the tokens are drawn as Poisson counts, so episodes share a trend but differ.
    """
    T, L, N, _ = _check_sizes(num_episodes, num_layers, num_experts, 1)
    g = _generator(seed)
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


# ---------------------------------------------------------------------- building blocks
# float64 [T, L, N] arrays a builder holds at once (path, steps, noise, shares, counts, ...).
_TRACE_ARRAYS = 8


def _check_sizes(num_episodes, num_layers, num_experts, group_size):
    T = check_int(num_episodes, "num_episodes")
    L = check_int(num_layers, "num_layers")
    N = check_int(num_experts, "num_experts")
    G = check_int(group_size, "group_size")
    if N % G != 0:
        raise ValueError(f"group_size={G} must divide num_experts={N}")
    # Before the first allocation: absurd sizes fail at once, not after hours of episodes.
    check_memory(_TRACE_ARRAYS * 8 * T * L * N,
                 f"a trace of num_episodes={T} x num_layers={L} x num_experts={N}")
    return T, L, N, G


def _generator(seed) -> torch.Generator:
    """A torch generator seeded with ``seed``, an integer in [-2**63, 2**64) (what torch takes)."""
    s = check_int(seed, "seed", -(2**63))
    if s >= 2**64:
        raise ValueError(f"seed must be < 2**64, got {s}")
    return torch.Generator().manual_seed(s)


def popularity(num_layers: int, num_experts: int, g: torch.Generator, *, skew: float,
               group_size: int, group_share: float = 0.5) -> torch.Tensor:
    """Log-popularity ``[L, N]`` with spread ``skew``: a group factor shared by each block of
    ``group_size`` consecutive experts (fraction ``group_share`` of the variance) plus an own
    factor, so hot experts cluster in groups."""
    L, N, G = num_layers, num_experts, group_size
    shared = torch.randn(L, N // G, generator=g, dtype=torch.float64).repeat_interleave(G, 1)
    own = torch.randn(L, N, generator=g, dtype=torch.float64)
    return skew * (group_share ** 0.5 * shared + (1 - group_share) ** 0.5 * own)


def sample_counts(logits: torch.Tensor, g: torch.Generator, *, noise: float,
                  tokens_per_episode: int) -> torch.Tensor:
    """Token counts ``[T, L, N]`` from a popularity path ``logits [T, L, N]``: per-episode
    log-normal noise of spread ``noise`` (what differs between episodes of one regime), then
    Poisson tokens of ``tokens_per_episode`` per layer and episode."""
    noisy = logits + noise * torch.randn(logits.shape, generator=g, dtype=torch.float64)
    p = torch.softmax(noisy, dim=-1)
    return torch.poisson(p * float(tokens_per_episode), generator=g)


def _sample(path: torch.Tensor, g: torch.Generator, noise, tokens_per_episode, with_popularity):
    """The counts of a popularity path ``[T, L, N]`` (and, ``with_popularity``, the expected
    shares ``softmax(path)`` [T, L, N]: each expert's popularity before the episode noise,
    which only the generator knows - the limit of any forecast)."""
    counts = sample_counts(path, g, noise=check_number(noise, "noise"),
                           tokens_per_episode=check_int(tokens_per_episode, "tokens_per_episode"))
    if with_popularity:
        return counts, torch.softmax(path.expand(counts.shape), dim=-1)
    return counts


def _swap_groups(logit: torch.Tensor, layer: int, hot: int, cold: int, G: int) -> None:
    """In place: experts of group ``hot`` and group ``cold`` of one layer trade popularities."""
    a = slice(hot * G, (hot + 1) * G)
    b = slice(cold * G, (cold + 1) * G)
    tmp = logit[layer, a].clone()
    logit[layer, a] = logit[layer, b]
    logit[layer, b] = tmp


# ---------------------------------------------------------------------- popularity paths
def stationary_trace(num_episodes: int, num_layers: int = 58, num_experts: int = 256, *,
                     skew: float = 0.8, noise: float = 0.15, group_size: int = 8,
                     tokens_per_episode: int = TOKENS_PER_EPISODE, seed: int = 0,
                     with_popularity: bool = False):
    """``[T, L, N]``: a fixed popularity per layer; episodes differ by noise only."""
    T, L, N, G = _check_sizes(num_episodes, num_layers, num_experts, group_size)
    g = _generator(seed)
    base = popularity(L, N, g, skew=check_number(skew, "skew"), group_size=G)
    return _sample(base.expand(T, L, N), g, noise, tokens_per_episode, with_popularity)


def drift_trace(num_episodes: int, num_layers: int = 58, num_experts: int = 256, *,
                skew: float = 0.8, drift: float = 0.05, noise: float = 0.15, group_size: int = 8,
                tokens_per_episode: int = TOKENS_PER_EPISODE, seed: int = 0,
                with_popularity: bool = False):
    """``[T, L, N]``: every expert's log-popularity takes a random-walk step of spread
    ``drift`` per episode, half of it shared by its group (groups drift together)."""
    T, L, N, G = _check_sizes(num_episodes, num_layers, num_experts, group_size)
    g = _generator(seed)
    d = check_number(drift, "drift")
    base = popularity(L, N, g, skew=check_number(skew, "skew"), group_size=G)
    steps = torch.stack([popularity(L, N, g, skew=d, group_size=G) for _ in range(T)])
    return _sample(base + steps.cumsum(0), g, noise, tokens_per_episode, with_popularity)


def swap_trace(num_episodes: int, num_layers: int = 58, num_experts: int = 256, *,
               skew: float = 0.8, swap_rate: float = 0.08, noise: float = 0.15,
               group_size: int = 8, tokens_per_episode: int = TOKENS_PER_EPISODE,
               seed: int = 0, with_popularity: bool = False):
    """``[T, L, N]``: hot/cold swaps. In each episode each layer, with probability
    ``swap_rate``, has one of its hottest groups (drawn by popularity) trade places with a
    group drawn at random: the old hot experts cool down, the new ones stay hot until the
    next swap. Between swaps popularity holds still (plus the episode noise)."""
    T, L, N, G = _check_sizes(num_episodes, num_layers, num_experts, group_size)
    g = _generator(seed)
    rate = check_number(swap_rate, "swap_rate")
    if rate > 1:
        raise ValueError(f"swap_rate must be a probability in [0, 1], got {swap_rate!r}")
    K = N // G
    if K < 2 and rate > 0:
        raise ValueError(f"swaps need two groups of experts or more: num_experts={N} makes {K} "
                         f"group of group_size={G}")
    logit = popularity(L, N, g, skew=check_number(skew, "skew"), group_size=G)
    path = torch.empty(T, L, N, dtype=torch.float64)
    for t in range(T):
        events = (torch.rand(L, generator=g, dtype=torch.float64) < rate).nonzero().flatten()
        for layer in events.tolist():
            heat = torch.softmax(logit[layer].view(K, G).logsumexp(-1) * 2.0, 0)
            hot = int(torch.multinomial(heat, 1, generator=g))
            cold = int(torch.randint(K - 1, (1,), generator=g))
            _swap_groups(logit, layer, hot, cold + (cold >= hot), G)
        path[t] = logit
    return _sample(path, g, noise, tokens_per_episode, with_popularity)


def burst_trace(num_episodes: int, num_layers: int = 58, num_experts: int = 256, *,
                skew: float = 0.8, burst_rate: float = 0.15, burst_size: float = 1.5,
                burst_len: int = 3, noise: float = 0.15, group_size: int = 8,
                tokens_per_episode: int = TOKENS_PER_EPISODE, seed: int = 0,
                with_popularity: bool = False):
    """``[T, L, N]``: a stationary popularity plus surges. In each episode each layer, with
    probability ``burst_rate``, has one group (drawn at random) gain ``burst_size`` in
    log-popularity, decaying linearly to nothing over ``burst_len`` episodes."""
    T, L, N, G = _check_sizes(num_episodes, num_layers, num_experts, group_size)
    g = _generator(seed)
    rate = check_number(burst_rate, "burst_rate")
    if rate > 1:
        raise ValueError(f"burst_rate must be a probability in [0, 1], got {burst_rate!r}")
    size = check_number(burst_size, "burst_size")
    span = check_int(burst_len, "burst_len")
    base = popularity(L, N, g, skew=check_number(skew, "skew"), group_size=G)
    K = N // G
    onset = (torch.rand(T, L, generator=g, dtype=torch.float64) < rate).to(torch.float64)
    group = torch.randint(K, (T, L), generator=g)
    kick = torch.zeros(T, L, K, dtype=torch.float64).scatter_(2, group.unsqueeze(-1), onset.unsqueeze(-1))
    surge = torch.zeros_like(kick)
    for age in range(span):  # a burst started `age` episodes ago still adds (1 - age/span)
        surge[age:] += kick[: T - age] * (1 - age / span)
    path = base + size * surge.repeat_interleave(G, 2)
    return _sample(path, g, noise, tokens_per_episode, with_popularity)


def switch_trace(num_episodes: int, num_layers: int = 58, num_experts: int = 256, *,
                 prefill_skew: float = 0.5, decode_skew: float = 1.0, overlap: float = 0.3,
                 switch_at: float | None = None, noise: float = 0.15, group_size: int = 8,
                 tokens_per_episode: int = TOKENS_PER_EPISODE, seed: int = 0,
                 with_popularity: bool = False):
    """``[T, L, N]``: a workload switch. Prefill-like popularity (flatter, spread
    ``prefill_skew``) until episode ``switch_at * T`` (None: drawn in the middle half of the
    trace), decode-like after (spread ``decode_skew``; correlation ``overlap`` with the
    prefill profile, so mostly other experts are hot)."""
    T, L, N, G = _check_sizes(num_episodes, num_layers, num_experts, group_size)
    g = _generator(seed)
    ov = check_number(overlap, "overlap")
    if ov > 1:
        raise ValueError(f"overlap must be in [0, 1], got {overlap!r}")
    unit_a = popularity(L, N, g, skew=1.0, group_size=G)
    unit_b = ov * unit_a + (1 - ov * ov) ** 0.5 * popularity(L, N, g, skew=1.0, group_size=G)
    frac = torch.rand((), generator=g, dtype=torch.float64).item() * 0.5 + 0.25
    if switch_at is not None:
        frac = check_number(switch_at, "switch_at")
        if frac > 1:
            raise ValueError(f"switch_at must be a fraction in [0, 1], got {switch_at!r}")
    cut = int(round(frac * T))
    path = torch.empty(T, L, N, dtype=torch.float64)
    path[:cut] = check_number(prefill_skew, "prefill_skew") * unit_a
    path[cut:] = check_number(decode_skew, "decode_skew") * unit_b
    return _sample(path, g, noise, tokens_per_episode, with_popularity)


def fast_swap_trace(num_episodes: int, num_layers: int = 58, num_experts: int = 256, *,
                    swap_rate: float = 0.16, **options) -> torch.Tensor:
    """:func:`swap_trace` with swaps twice as frequent. Replayed as a server lives it (re-plan
    every 8 episodes from the last 16, judged on the next 8; 288 slots on 32 devices), fresh
    plans serve ~1.33 and vllm-ascend's public FlashLB ~1.35 at ~160k moves: the figures of
    the hardest case we were shown, so this regime stands for it in the benchmarks."""
    return swap_trace(num_episodes, num_layers, num_experts, swap_rate=swap_rate, **options)


_BUILDERS = {"stationary": stationary_trace, "drift": drift_trace, "swaps": swap_trace,
             "swaps-fast": fast_swap_trace, "bursts": burst_trace, "switch": switch_trace}


def regime_trace(regime: str, num_episodes: int, num_layers: int = 58, num_experts: int = 256, *,
                 seed: int = 0, **options) -> torch.Tensor:
    """Per-episode token counts ``[T, L, N]`` of one drift regime (see :data:`REGIMES` and the
    module docstring); ``options`` go to that regime's builder (``skew``, ``noise``,
    ``group_size``, ``tokens_per_episode`` and the regime's own rates). With
    ``with_popularity=True`` every builder returns ``(counts [T, L, N], shares [T, L, N])``:
    also each expert's expected share of its layer in each episode, before the episode noise
    (what a forecast could at best know of the present; ``bench/serving.py`` measures that limit)."""
    if regime not in _BUILDERS:
        raise ValueError(f"regime must be one of {REGIMES}, got {regime!r}")
    return _BUILDERS[regime](num_episodes, num_layers, num_experts, seed=seed, **options)
