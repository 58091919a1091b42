"""Forecast the next window: turn the episodes of the last window into weighted scenarios.

A placement serves the steps *after* the window it was planned on. The solver's objective is
the weighted mean over scenarios of the per-scenario peak/avg; this module decides what those
scenarios are and how much each weighs, from the episodes alone (pure tensor functions):

1. **Regime changes.** Per layer and expert, the strongest change point (the split of the
   window whose two means differ most, as a z-score against the noise between consecutive
   episodes): the expert's share before it describes a popularity that is gone. A change
   counts only if it lasts: the later half of the episodes after it must keep most of the
   jump (``persistence``), so a surge that is already fading is not taken for a new level.
2. **Level.** The next window's expected share of each expert: a (recency-weighted, with
   ``level_half_life``) mean of the episodes after its change point.
3. **Noise.** Each episode becomes one scenario: the level plus that episode's deviation
   from the mean of its own segment, so the plan stays robust to the noise between episodes
   (the multi-episode objective) while aiming at where the loads are going; the latest
   scenarios may weigh more (``scenario_half_life``).

Scenarios are in token units (each layer's scenarios sum to its mean tokens per episode).
"""

from __future__ import annotations

import torch

from ._checks import as_hotness, check_int

__all__ = ["check_options", "shares", "noise_scale", "change_scores", "change_points", "persistent_changes",
           "recency_weights", "forecast_scenarios", "DEFAULT"]

# The options of flashlb.plan(forecast=True): the best of the variants measured on every regime
# of flashlb.synthetic (next-window peak/avg of fresh plans every cycle, tuning seeds 11, 12, 21,
# 22, 12 layers). Against planning on the episodes as they are it gains ~0.7% on hot/cold swaps
# and ~0.1% on average, within the spread between seeds, so plan's default stays forecast=False
# (see README, "Plan for the next window").
DEFAULT = {"change_threshold": 5.0, "level_half_life": None, "min_segment": 4,
           "persistence": 0.3, "scenario_half_life": 4.0}


def shares(episodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """episodes [T, L, N] -> (shares [T, L, N], live [T, L]): each episode's loads as fractions
    of its layer's total; episodes without load have zero shares and are not live."""
    tot = episodes.sum(-1, keepdim=True)
    live = tot.squeeze(-1) > 0
    return torch.where(tot > 0, episodes / torch.where(tot > 0, tot, torch.ones_like(tot)),
                       torch.zeros_like(episodes)), live


def noise_scale(s: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
    """[L, N] the spread of one episode's share of each expert around its level, from the
    median squared difference of consecutive live episodes (robust to a few regime changes).
    s: [T, L, N] shares, live: [T, L]."""
    d2 = (s[1:] - s[:-1]).square()  # [T-1, L, N]
    both = (live[1:] & live[:-1]).unsqueeze(-1).expand_as(d2)
    d2 = torch.where(both, d2, torch.full_like(d2, float("nan")))
    # the median of a chi-square with one degree of freedom is 0.4549; a difference has twice the variance
    var = d2.nanmedian(0).values / (2 * 0.4549)
    return torch.nan_to_num(var, nan=0.0).sqrt()


def change_scores(s: torch.Tensor, live: torch.Tensor, *,
                  min_segment: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Per layer and expert, the strongest split of the window and its z-score.

    s: [T, L, N] shares, live: [T, L] -> (z [L, N], split [L, N] int64). For every split k the
    difference of the mean share after and before k, in units of what noise alone would give
    (:func:`noise_scale` x sqrt(1/k + 1/(T-k))), is a z-score; both sides keep ``min_segment``
    live episodes (z = 0 where no split qualifies).
    """
    T, L, N = s.shape
    if T < 2 * min_segment:
        return torch.zeros(L, N, dtype=s.dtype), torch.zeros(L, N, dtype=torch.int64)
    sigma = noise_scale(s, live)  # [L, N]
    lv = live.to(s.dtype).unsqueeze(-1)  # [T, L, 1]
    csum = (s * lv).cumsum(0)[:-1]  # [T-1, L, N]: split k = index + 1
    nb = lv.cumsum(0)[:-1]  # [T-1, L, 1] live episodes before the split
    na = lv.sum(0) - nb
    diff = ((s * lv).sum(0) - csum) / na.clamp_min(1) - csum / nb.clamp_min(1)
    scale = sigma * (1 / nb.clamp_min(1) + 1 / na.clamp_min(1)).sqrt()
    z = diff.abs() / scale.clamp_min(1e-12)
    ok = (nb >= min_segment) & (na >= min_segment) & (scale > 0)
    z = torch.where(ok, z, torch.zeros_like(z))
    best, k = z.max(0)  # [L, N]
    return best, k + 1


def change_points(s: torch.Tensor, live: torch.Tensor, *, threshold: float,
                  min_segment: int = 2) -> torch.Tensor:
    """Per layer and expert, the first episode after its strongest regime change, or 0.

    s: [T, L, N] shares, live: [T, L] -> [L, N] int64: the split of :func:`change_scores`
    where its z-score exceeds ``threshold``. Per expert, so a small group of swapped experts
    is seen as clearly as a whole new workload.
    """
    z, k = change_scores(s, live, min_segment=min_segment)
    return torch.where(z > threshold, k, torch.zeros_like(k))


def persistent_changes(s: torch.Tensor, live: torch.Tensor, split: torch.Tensor,
                       min_retained: float) -> torch.Tensor:
    """Per layer and expert, whether the change at ``split`` lasts.

    s: [T, L, N] shares, live: [T, L], split: [L, N] int64 (first episode after the change)
    -> [L, N] bool. The live episodes after the split are cut into an earlier and a later half;
    the change lasts if the later half's jump from the mean before the split is between
    ``min_retained`` and ``1 / min_retained`` times the earlier half's (same sign). A level
    shift keeps its jump (ratio ~1); a surge that fades does not (ratio ~0).
    """
    T = s.shape[0]
    idx = torch.arange(T).view(T, 1, 1)
    lv = live.to(s.dtype).unsqueeze(-1)  # [T, L, 1]
    k = split.unsqueeze(0)  # [1, L, N]
    after = (idx >= k).to(s.dtype) * lv  # [T, L, N]
    rank = after.cumsum(0)  # 1, 2, ... over the live episodes after the split
    half = (after.sum(0, keepdim=True) / 2).ceil()
    early = after * (rank <= half)
    late = after - early
    before = (idx < k).to(s.dtype) * lv

    def mean(w):
        return (s * w).sum(0) / w.sum(0).clamp_min(1)

    base = mean(before)
    j1, j2 = mean(early) - base, mean(late) - base
    ratio = j2 / torch.where(j1 != 0, j1, torch.ones_like(j1))
    ok = (late.sum(0) > 0) & (before.sum(0) > 0) & (j1 != 0)
    return ok & (ratio >= min_retained) & (ratio <= 1 / min_retained)


def recency_weights(start: torch.Tensor, live: torch.Tensor,
                    half_life: float | None) -> torch.Tensor:
    """Weights over episodes summing to 1 (0 where nothing is live): episodes from ``start``
    on, live ones only, the latest weighing more with ``half_life`` (episodes; None: equal).
    start: [L] or [L, N], live: [T, L] -> [T, L] or [T, L, N]."""
    T, L = live.shape
    shape = (T,) + tuple(start.shape)
    idx = torch.arange(T).view(T, *([1] * start.dim()))
    lv = live.view(T, L, *([1] * (start.dim() - 1)))
    keep = (idx >= start.unsqueeze(0)) & lv
    age = (T - 1 - idx).to(torch.float64).expand(shape)
    w = torch.ones(shape, dtype=torch.float64) if half_life is None else torch.pow(0.5, age / half_life)
    w = w * keep
    tot = w.sum(0, keepdim=True)
    return torch.where(tot > 0, w / torch.where(tot > 0, tot, torch.ones_like(tot)), w)


def check_options(options: dict, label: str = "{}") -> None:
    """Refuse option values :func:`forecast_scenarios` cannot use: one ValueError naming the
    option (as ``label.format(name)``). Options absent from ``options`` are not checked."""
    for key in ("change_threshold", "level_half_life", "scenario_half_life"):
        v = options.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0
                              or v == float("inf")):
            raise ValueError(f"{label.format(key)} must be a finite number > 0 or None, got {v!r}")
    persist = options.get("persistence")
    if persist is not None and (isinstance(persist, bool) or not isinstance(persist, (int, float))
                                or not 0 < persist <= 1):
        raise ValueError(f"{label.format('persistence')} must be a number in (0, 1] or None, got {persist!r}")
    keep = options.get("keep_episodes", 0.0)
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0 <= keep < 1:
        raise ValueError(f"{label.format('keep_episodes')} must be a number in [0, 1), got {keep!r}")
    if not isinstance(options.get("shrink", False), bool):
        raise ValueError(f"{label.format('shrink')} must be True or False, got {options['shrink']!r}")
    if "min_segment" in options:
        check_int(options["min_segment"], label.format("min_segment"))


def forecast_scenarios(episodes: torch.Tensor, *, change_threshold: float | None = 4.0,
                       level_half_life: float | None = 4.0, shrink: bool = False,
                       keep_episodes: float = 0.0, min_segment: int = 2,
                       persistence: float | None = None,
                       scenario_half_life: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scenarios of the next window from the episodes of the last one.

    episodes: [T, L, N] float64 loads. change_threshold: the z-score above which an expert's
    share before its strongest change point is left out of its level (None: never).
    level_half_life: episodes; the level weighs the latest ones more (None: equally).
    shrink: move a changed expert's level only part of the way to its post-change mean,
    by 1 - (change_threshold / z)^2 (weak evidence, small step).
    keep_episodes: a weight in [0, 1) for the episodes as they are, kept as scenarios beside
    the forecast ones (a hedge in case the change does not last); > 0 doubles the scenarios.
    min_segment: live episodes each side of a change point keeps at least.
    persistence: in (0, 1]; a change point counts only if it lasts by
    :func:`persistent_changes` with this ``min_retained`` (None: every change above the threshold).
    scenario_half_life: episodes; the scenarios of the latest episodes weigh more (None: equally).
    Returns (scenarios [T', L, N], weights [T', L]) with T' = T (or 2T with keep_episodes):
    scenario t is the level plus episode t's deviation from the mean of its own segment (per
    expert), so every episode keeps serving as a sample of the noise; weights are equal over a
    layer's live episodes (decaying with age with ``scenario_half_life``).
    """
    check_options(dict(change_threshold=change_threshold, level_half_life=level_half_life, shrink=shrink,
                       keep_episodes=keep_episodes, min_segment=min_segment, persistence=persistence,
                       scenario_half_life=scenario_half_life))
    h = as_hotness(episodes, "episodes").cpu()  # [T, L, N] float64, finite, >= 0
    T, L, N = h.shape
    s, live = shares(h)
    zero = torch.zeros(L, N, dtype=torch.int64)
    if change_threshold is None:
        start, z = zero, torch.zeros(L, N, dtype=torch.float64)
    else:
        z, k = change_scores(s, live, min_segment=min_segment)
        changed = z > change_threshold
        if persistence is not None:
            changed = changed & persistent_changes(s, live, k, persistence)
        start = torch.where(changed, k, zero)
    post = recency_weights(start, live, None)  # [T, L, N]
    every = recency_weights(zero, live, None)
    post_mean = (s * post).sum(0)  # [L, N]
    after = torch.arange(T).view(T, 1, 1) >= start.unsqueeze(0)  # [T, L, N]
    pre_w = every * ~after
    pre_mean = (s * pre_w).sum(0) / pre_w.sum(0).clamp_min(1e-300)
    seg_mean = torch.where(after, post_mean.unsqueeze(0), pre_mean.unsqueeze(0))
    hl = None if level_half_life is None else float(level_half_life)
    level = (s * recency_weights(start, live, hl)).sum(0)
    if shrink and change_threshold is not None:
        base = (s * recency_weights(zero, live, hl)).sum(0)
        f = (1 - (change_threshold / z.clamp_min(1e-12)).square()).clamp_min(0)
        level = base + torch.where(start > 0, f, torch.zeros_like(f)) * (level - base)
    scen = (level + (s - seg_mean)).clamp_min(0)
    scen = scen / scen.sum(-1, keepdim=True).clamp_min(1e-300)
    tokens = (h.sum(-1) * live).sum(0) / live.sum(0).clamp_min(1)  # [L] mean tokens per live episode
    w = recency_weights(torch.zeros(L, dtype=torch.int64), live, scenario_half_life)  # [T, L]
    scen = torch.where(live.unsqueeze(-1), scen * tokens.view(1, L, 1), torch.zeros_like(scen))
    if keep_episodes > 0:
        raw = torch.where(live.unsqueeze(-1), s * tokens.view(1, L, 1), torch.zeros_like(s))
        return torch.cat([raw, scen]), torch.cat([keep_episodes * w, (1 - keep_episodes) * w])
    return scen, w
