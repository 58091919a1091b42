"""The FlashLB solver: joint replica allotment and placement over episodes.

Batched over layers (and nodes) in torch: episode weights and normalisation, candidate
replica counts (plain, risk-weighted and peak-weighted allotments), selection of the best
candidate per layer and the comparison with the default greedy. The sequential part - build
a placement for each candidate, then improve counts and placement together by swap and
shift moves - runs in C++ (``torch.ops.flashlb.joint_search``, host/solver), in parallel
over problems.
"""

from __future__ import annotations

import time

import torch

from .. import ops
from ..metrics import episode_weights
from ..placement import Placement
from .allotment import allot_replicas, best_allotments, refine_counts
from .greedy import greedy_global, greedy_hierarchical, groups_to_nodes, nodes_to_layer

__all__ = ["solve", "normalise", "weighted_peak_ratio"]

# z-score of the 75th percentile of a normal: the risk weight mean + Z * std covers a bad
# quarter of episodes without chasing outliers.
RISK_Z = 0.674


def normalise(h: torch.Tensor, num_devices: int, weights: torch.Tensor):
    """Per-layer episode weights and loads scaled so each episode's device average is 1.

    h: [T, L, N] float64, weights: [T] -> (w [L, T, N], ew [L, T]). Episodes in which a layer
    has no load get weight 0; a layer without any load gets all-zero weights.
    """
    tot = h.sum(-1)  # [T, L]
    live = tot > 0
    ew = weights.to(h).unsqueeze(1) * live
    norm = ew.sum(0, keepdim=True)
    ew = torch.where(norm > 0, ew / torch.where(norm > 0, norm, torch.ones_like(norm)), ew)
    scale = torch.where(live, num_devices / torch.where(live, tot, torch.ones_like(tot)),
                        torch.zeros_like(tot))
    w = h * scale.unsqueeze(-1)
    return w.permute(1, 0, 2).contiguous(), ew.t().contiguous()


def weighted_peak_ratio(phy2log: torch.Tensor, w: torch.Tensor, ew: torch.Tensor,
                        num_devices: int) -> torch.Tensor:
    """phy2log [B, P], w [B, T, N] normalised, ew [B, T] -> [B] sum_t ew * peak/avg."""
    B, T, N = w.shape
    cnt = torch.zeros(B, N, dtype=torch.float64).scatter_add_(
        1, phy2log, torch.ones(phy2log.shape, dtype=torch.float64))
    per = w / cnt.clamp_min(1).unsqueeze(1)
    slot = per.gather(2, phy2log.unsqueeze(1).expand(B, T, -1))
    peak = slot.view(B, T, num_devices, -1).sum(-1).amax(-1)
    return (peak * ew).sum(-1)


def _candidates(w: torch.Tensor, ew: torch.Tensor, P: int, D: int) -> torch.Tensor:
    """Candidate replica counts [B, K, N] for w [B, T, N], ew [B, T].

    Min-max allotments on the mean load and, with several episodes, on a risk weight; then
    the packing look-ahead refinement of the first. Large problems keep one candidate: the
    local search's shift moves adjust counts there, and a whole model must take milliseconds.
    """
    B, T, N = w.shape
    mean = (w * ew.unsqueeze(-1)).sum(1)
    if T > 1:
        std = ((w - mean.unsqueeze(1)).square() * ew.unsqueeze(-1)).sum(1).sqrt()
        base = allot_replicas(mean + RISK_Z * std, P, D)
    else:
        base = allot_replicas(mean, P, D)
    cands = [base]
    if P * T <= 4096 and T > 1:
        cands.append(allot_replicas(mean, P, D))
    if P * T <= 256:  # the look-ahead sorts every candidate's replicas: small problems only
        cands.append(refine_counts(w, ew, base, D))
        best = best_allotments(w, ew, P, D, k=4, limit=2048)
        if best is not None:
            return torch.cat([torch.stack(cands, 1), best], 1)
    return torch.stack(cands, 1)


def _auto_rounds(P: int, T: int) -> int:
    """Perturbation rounds when no time budget is given: many for small problems, where the
    search is cheap and the exact optimum is within reach, few for a whole model."""
    work = P * max(T, 1)
    if work <= 64:
        return 400
    if work <= 160:
        return 100
    return 0


def _search(w, ew, P, D, *, seed, smoothing, rounds, deadline):
    """Best fresh placement per problem over the candidates. Returns slots [B, P], H [B]."""
    B, T, N = w.shape
    cands = _candidates(w, ew, P, D)  # [B, K, N]
    K = cands.shape[1]
    # Identical candidates of one problem are searched once.
    keep = torch.ones(B, K, dtype=torch.bool)
    for k in range(1, K):
        same = (cands[:, k : k + 1] == cands[:, :k]).all(-1).any(-1)
        keep[:, k] = ~same
    bi, ki = keep.nonzero(as_tuple=True)
    budget = 0.0 if deadline is None else max(deadline - time.perf_counter(), 1e-3)
    slots, _, stats = ops.joint_search(
        w[bi], ew[bi], cands[bi, ki], None, None, D, P, smoothing, 0.0, rounds, seed, budget)
    score = torch.full((B, K), float("inf"), dtype=torch.float64)
    score[bi, ki] = stats[:, 1]
    best = score.argmin(1)
    out = torch.empty(B, P, dtype=torch.int64)
    sel = ki == best[bi]
    out[bi[sel]] = slots[sel]
    h = score.gather(1, best.unsqueeze(1)).squeeze(1)
    # Anytime: with a budget, keep perturbing every problem in fair waves until time is up.
    wave = 1
    while deadline is not None and time.perf_counter() < deadline - 2e-3:
        left = deadline - time.perf_counter()
        slots, _, stats = ops.joint_search(
            w, ew, torch.zeros(B, N, dtype=torch.int64), out, None, D, P, smoothing, 0.0,
            max(rounds, 8), seed + 7919 * wave, left)
        better = stats[:, 1] < h - 1e-12
        out[better] = slots[better]
        h = torch.where(better, stats[:, 1], h)
        wave += 1
    return out, h


def solve(h: torch.Tensor, num_physical: int, num_devices: int, *, num_groups=None,
          num_nodes: int = 1, time_budget: float | None = None, seed: int = 0,
          recency_half_life: float | None = None, previous: Placement | None = None,
          move_penalty: float = 0.0, smoothing: float = 0.05,
          perturb_rounds: int | None = None) -> Placement:
    """FlashLB placement for every layer.

    h: [T, L, N] float64 CPU loads (checked by the caller); the sizes are checked too.
    num_groups / num_nodes > 1: hierarchical (groups packed onto nodes, then each node solved).
    Returns a duplicate-free Placement, never worse on the weighted per-episode peak/avg than
    the default greedy's placement whenever the greedy's placement is itself duplicate-free.
    """
    start = time.perf_counter()
    deadline = None if time_budget is None else start + float(time_budget)
    T, L, N = h.shape
    P, D, M = num_physical, num_devices, num_nodes
    for name, v in (("smoothing", smoothing), ("move_penalty", move_penalty)):
        if not (isinstance(v, (int, float)) and v >= 0 and v == v and v != float("inf")):
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    if perturb_rounds is None:
        rounds = _auto_rounds(P // M, T)
    elif isinstance(perturb_rounds, int) and not isinstance(perturb_rounds, bool) and perturb_rounds >= 0:
        rounds = perturb_rounds
    else:
        raise ValueError(f"perturb_rounds must be an int >= 0, got {perturb_rounds!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    w, ew = normalise(h, D, episode_weights(T, recency_half_life))  # [L, T, N], [L, T]
    near = dict(seed=seed, smoothing=smoothing, move_penalty=move_penalty, rounds=rounds,
                deadline=deadline)
    if previous is not None and move_penalty > 0 and M == 1 and not bool(previous.has_duplicates().any()):
        # Moves cost: search from the placement in service (a fresh plan would move most slots).
        return _search_near(previous, w, ew, D, P, **near)

    if M > 1:
        mean = (w * ew.unsqueeze(-1)).sum(1)
        mlog2log = groups_to_nodes(mean, num_groups, M)  # [L, N]
        wn = w.gather(2, mlog2log.unsqueeze(1).expand(L, T, N))
        wn = wn.view(L, T, M, N // M).permute(0, 2, 1, 3).reshape(L * M, T, N // M)
        ewn = ew.repeat_interleave(M, 0)
        slots, _ = _search(wn, ewn, P // M, D // M, seed=seed, smoothing=smoothing,
                           rounds=rounds, deadline=deadline)
        phy = nodes_to_layer(slots, mlog2log, M)
        greedy = greedy_hierarchical(h.sum(0), P, num_groups, M, D)
    else:
        phy, _ = _search(w, ew, P, D, seed=seed, smoothing=smoothing, rounds=rounds,
                         deadline=deadline)
        greedy = greedy_global(h.sum(0), P, D)

    # Never worse than the default greedy where the greedy's placement is admissible.
    ours = weighted_peak_ratio(phy, w, ew, D)
    theirs = weighted_peak_ratio(greedy, w, ew, D)
    g = Placement.from_phy2log(greedy, N, D)
    take = (theirs < ours - 1e-12) & ~g.has_duplicates()
    if bool(take.any()):
        phy = torch.where(take.unsqueeze(1), greedy, phy)
    result = Placement.from_phy2log(phy, N, D)
    if previous is None:
        return result
    # Per layer, the better of the fresh placement aligned to the one in service and a search
    # from the one in service: peak/avg + move_penalty * moves, ties to fewer moves.
    from ..redeploy.align import align_to

    fresh = align_to(result, previous, M)
    rows = (~previous.has_duplicates()).nonzero().flatten()
    if M > 1 or rows.numel() == 0:  # a warm search would not keep groups on their nodes
        return fresh
    close = _search_near(previous.select_layers(rows), w[rows], ew[rows], D, P, **near)
    old = previous.phy2log[rows].to(torch.int64)

    def score(phy):
        moved = (phy != old).sum(1).to(torch.float64)
        return weighted_peak_ratio(phy, w[rows], ew[rows], D) + (move_penalty + 1e-9) * moved

    better = score(close.phy2log) < score(fresh.phy2log[rows])
    phy = fresh.phy2log.clone()
    phy[rows[better]] = close.phy2log[better]
    return Placement.from_phy2log(phy, N, D)


def _search_near(previous: Placement, w, ew, D, P, *, seed, smoothing, move_penalty, rounds,
                 deadline) -> Placement:
    """The search started from ``previous`` (duplicate-free), paying ``move_penalty`` per
    moved slot, aligned back to it. w [L, T, N], ew [L, T] of the layers of ``previous``."""
    from ..redeploy.align import align_to

    old = previous.phy2log.to(torch.int64)
    budget = 0.0 if deadline is None else max(deadline - time.perf_counter(), 1e-3)
    slots, _, _ = ops.joint_search(w, ew, torch.zeros(w.shape[0], w.shape[2], dtype=torch.int64),
                                   old, old, D, P, smoothing, move_penalty, rounds, seed, budget)
    return align_to(Placement.from_phy2log(slots, w.shape[2], D), previous)
