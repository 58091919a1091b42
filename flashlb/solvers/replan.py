"""Move-aware re-planning: which point between the placement in service and a fresh plan.

A fresh plan moves most slots; a local search started from the placement in service can stay
stuck in the old basin once hot experts have traded places. Both are ends of one path: per
layer, the fresh plan aligned to the one in service differs from it in C changed slots. The
first step on the way applies only the fresh replica counts (a hot expert's new replicas,
the fewest moves that split its load); further points apply the changed slots in order of
estimated gain per slot. Each point is made admissible (every expert keeps a replica), improved by the C++ local search at
the given move penalty, and all points of all layers are scored at once in torch. A layer
then takes the point that minimises window objective + ``move_penalty`` x moves, or, under a
move budget, the points that minimise the sum of that over layers with total moves within
the budget (an exact multiple-choice knapsack over the layers' frontiers).

Candidates always include "keep" (no move) and "fresh aligned", so the choice is never worse
on that objective than either.
"""

from __future__ import annotations

import time

import torch

from ..objective import weighted_peak_ratio
from .search import joint_search

__all__ = ["counts_point", "path_points", "score_points", "choose", "replan", "keep_slots", "PATH_FRACTIONS"]

# Points on the path, as fractions of the layer's changed slots (0: the search from the
# placement in service; 1 is the fresh plan itself, always a candidate).
PATH_FRACTIONS = (0.0, 0.5)
# Under a move budget, searches from the placement in service at these multiples of the move
# penalty (at least LADDER_BASE) add points with few moves to each layer's frontier.
BUDGET_LADDER = (4.0, 16.0, 64.0)
LADDER_BASE = 2.5e-4
# Ties between candidates go to fewer moves.
_TIE = 1e-9


def _counts(phy: torch.Tensor, N: int) -> torch.Tensor:
    """phy [B, P] -> replicas per expert [B, N] (int64)."""
    return torch.zeros(phy.shape[0], N, dtype=torch.int64).scatter_add_(
        1, phy, torch.ones_like(phy))


def _change_order(old: torch.Tensor, fresh: torch.Tensor, w: torch.Tensor, ew: torch.Tensor,
                  D: int) -> torch.Tensor:
    """Rank [L, P] of each changed slot (0 first; unchanged slots rank P).

    A change at slot p on device d replaces old load r_old[p] by the fresh plan's r_new[p]:
    its estimated gain is sum_t ew[t] * (r_old - r_new)[t] * (L_old[d, t] - 1), the first-order
    drop of the squared device loads - positive where load leaves a device above average.
    """
    L, T, N = w.shape
    P = old.shape[1]
    S = P // D
    r_old = (w / _counts(old, N).to(w.dtype).clamp_min(1).unsqueeze(1)).gather(
        2, old.unsqueeze(1).expand(L, T, P))
    r_new = (w / _counts(fresh, N).to(w.dtype).clamp_min(1).unsqueeze(1)).gather(
        2, fresh.unsqueeze(1).expand(L, T, P))
    excess = (r_old.view(L, T, D, S).sum(-1) - 1.0).repeat_interleave(S, dim=2)  # [L, T, P]
    gain = ((r_old - r_new) * excess * ew.unsqueeze(-1)).sum(1)
    changed = old != fresh
    gain = torch.where(changed, gain, torch.full_like(gain, -float("inf")))
    order = gain.argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(P).expand(L, P).contiguous())
    return torch.where(changed, rank, torch.full_like(rank, P))


def counts_point(old: torch.Tensor, fresh: torch.Tensor, w: torch.Tensor, ew: torch.Tensor,
                 num_devices: int) -> torch.Tensor:
    """The first step of the path: the fresh plan's replica counts, the old placement.

    old, fresh: [L, P]; w [L, T, N], ew [L, T] -> [L, P]. Experts the fresh plan gives fewer
    replicas hand theirs over, taken from the heaviest devices; experts it gives more take
    them, heaviest expert first, each onto the lightest freed slot whose device lacks it (a
    slot nobody can take gets its old expert back). These are the fewest moves that change
    the counts, and counts are where a hot expert's load is split. Per layer on the host:
    a few dozen slots change.
    """
    L, P = old.shape
    N = w.shape[2]
    D = num_devices
    S = P // D
    mean = (w * ew.unsqueeze(-1)).sum(1)  # [L, N]
    c_old, c_new = _counts(old, N), _counts(fresh, N)
    out = old.clone()
    for layer in (c_old != c_new).any(1).nonzero().flatten().tolist():
        phy, m = old[layer].tolist(), mean[layer].tolist()
        co, cn = c_old[layer].tolist(), c_new[layer].tolist()
        dev = [0.0] * D
        where = [[] for _ in range(N)]
        for p, e in enumerate(phy):
            dev[p // S] += m[e] / co[e]
            where[e].append(p)
        held = [set(phy[d * S:(d + 1) * S]) for d in range(D)]
        free = []
        for e in range(N):
            if cn[e] < co[e]:
                free += sorted(where[e], key=lambda p: -dev[p // S])[: co[e] - cn[e]]
        for p in free:
            e = phy[p]
            dev[p // S] -= m[e] / co[e]
            held[p // S].discard(e)
            phy[p] = -1
        gaining = sorted((e for e in range(N) if cn[e] > co[e]), key=lambda e: -m[e])
        for e in gaining:
            for _ in range(cn[e] - co[e]):
                opts = [p for p in free if phy[p] < 0 and e not in held[p // S]]
                if not opts:
                    break
                p = min(opts, key=lambda q: dev[q // S])
                phy[p] = e
                held[p // S].add(e)
                dev[p // S] += m[e] / cn[e]
        for p in free:
            if phy[p] < 0:  # nobody could take it: the old expert stays
                phy[p] = int(old[layer, p])
                held[p // S].add(phy[p])
        out[layer] = torch.tensor(phy)
    bad = (_counts(out, N) == 0).any(1) | _has_duplicates(out, N, D)
    return torch.where(bad.unsqueeze(1), old, out)


def path_points(old: torch.Tensor, fresh: torch.Tensor, w: torch.Tensor, ew: torch.Tensor,
                num_devices: int, fractions=PATH_FRACTIONS) -> torch.Tensor:
    """Admissible points between ``old`` and ``fresh`` (aligned to it): [L, K, P].

    old, fresh: [L, P] duplicate-free placements with every expert placed; w [L, T, N]
    normalised loads, ew [L, T]. Point k applies the ceil(fractions[k] * C) best-ranked of the
    layer's C changed slots (:func:`_change_order`). An expert whose every replica was
    replaced while its new places are still pending takes a slot back (:func:`_give_back`). Every device stays full; no expert lands twice
    on a device, since the fresh plan, aligned, adds to a device only experts the old one did
    not hold there; a point that still broke a rule (never expected) becomes the fresh plan.
    """
    L, P = old.shape
    N = w.shape[2]
    D = num_devices
    S = P // D
    K = len(fractions)
    rank = _change_order(old, fresh, w, ew, D)  # [L, P]
    C = (rank < P).sum(1, keepdim=True).to(torch.float64)  # [L, 1]
    frac = torch.tensor(fractions, dtype=torch.float64).unsqueeze(0)
    take = torch.ceil(frac * C).to(torch.int64)  # [L, K]
    applied = rank.unsqueeze(1) < take.unsqueeze(2)  # [L, K, P]
    o = old.repeat_interleave(K, 0)
    f = fresh.repeat_interleave(K, 0)
    pt = torch.where(applied.reshape(L * K, P), f, o)
    pt = _give_back(pt, o, f, rank.repeat_interleave(K, 0), w, ew, K)
    bad = (_counts(pt, N) == 0).any(1) | _has_duplicates(pt, N, D)
    pt = torch.where(bad.unsqueeze(1), f, pt)
    return pt.view(L, K, P)


def _give_back(pt: torch.Tensor, old: torch.Tensor, fresh: torch.Tensor, rank: torch.Tensor,
               w: torch.Tensor, ew: torch.Tensor, K: int) -> torch.Tensor:
    """Place every expert missing from ``pt`` [B, P] once more, batched over rows.

    First each missing expert takes its best-ranked pending change of the path (a slot where
    the fresh plan puts it) whose expert has a replica to spare: a step forward. Whatever is
    still missing then takes spare slots - replicas of experts with more than one, slots the
    path would change anyway first, then the lightest. With m experts missing there are at
    least m spare slots, and a missing expert is on no device, so nothing lands twice.
    old, fresh, rank [B, P]; w [B / K, T, N], ew [B / K, T].
    """
    B, P = pt.shape
    N = w.shape[2]
    cnt = _counts(pt, N)
    missing = cnt == 0
    if not bool(missing.any()):
        return pt
    spare = cnt.gather(1, pt) >= 2
    step = spare & (pt != fresh) & missing.gather(1, fresh)
    best = torch.full((B, N), P, dtype=torch.int64).scatter_reduce_(
        1, fresh, torch.where(step, rank, torch.full_like(rank, P)), reduce="amin")
    step = step & (rank == best.gather(1, fresh))
    # Two steps must not take the last spare replicas of one expert: keep the first c - 1.
    drawn = torch.where(step, pt, torch.full_like(pt, N))
    order = (drawn * P + rank).argsort(dim=1, stable=True)
    sorted_e = drawn.gather(1, order)
    start = torch.searchsorted(sorted_e, sorted_e)
    occ = torch.empty_like(order).scatter_(1, order, torch.arange(P).expand(B, P) - start)
    step = step & (occ < cnt.gather(1, pt) - 1)
    pt = torch.where(step, fresh, pt)

    cnt = _counts(pt, N)
    missing = cnt == 0
    m = missing.sum(1)  # [B]
    if not bool(m.any()):
        return pt
    mean = (w * ew.unsqueeze(-1)).sum(1).repeat_interleave(K, 0)  # [B, N]
    c = cnt.gather(1, pt)
    load = mean.gather(1, pt) / c.clamp_min(1)
    key = ((pt == old) & (pt != fresh)).to(torch.float64) * 2.0 - load / (1.0 + load)
    # Rank of each slot among its expert's slots, preferred first: all but one may go.
    order = (pt.to(torch.float64) * 4.0 - key).argsort(dim=1, stable=True)
    sorted_e = pt.gather(1, order)
    start = torch.searchsorted(sorted_e, sorted_e)
    occ = torch.empty_like(order).scatter_(1, order, torch.arange(P).expand(B, P) - start)
    spare = occ < c - 1
    slots = torch.where(spare, key, torch.full_like(key, -float("inf"))).argsort(
        dim=1, descending=True, stable=True)  # spare slots first, preferred first
    ids = (~missing).to(torch.int8).argsort(dim=1, stable=True)  # missing experts first
    j = torch.arange(min(P, N)).expand(B, -1)
    use = j < m.unsqueeze(1)
    out = pt.clone()
    r = torch.arange(B).unsqueeze(1).expand_as(j)
    out[r[use], slots[:, : j.shape[1]][use]] = ids[:, : j.shape[1]][use]
    return out


def keep_slots(new: torch.Tensor, old: torch.Tensor, num_devices: int) -> torch.Tensor:
    """new [B, P] with each device's experts re-ordered so that those ``old`` [B, P] held on
    that device keep their old slot; the rest fill the freed slots in order. Devices stay
    as they are (the local search never relabels them), so moves count only real changes.
    Both placements must be duplicate-free."""
    B, P = new.shape
    D = num_devices
    S = P // D
    nv, ov = new.view(B, D, S), old.view(B, D, S)
    eq = nv.unsqueeze(-1) == ov.unsqueeze(-2)  # [B, D, S_new, S_old]
    kept = eq.any(-1)  # new slot i holds an expert the device held before
    target = eq.to(torch.int8).argmax(-1)  # its old position
    taken = eq.any(-2)  # old position j is reused
    free = torch.where(~taken, torch.arange(S).expand_as(taken), torch.full_like(target, S))
    free = free.sort(-1).values  # free positions first, ascending
    rest = (~kept).cumsum(-1) - 1
    target = torch.where(kept, target, free.gather(-1, rest.clamp_min(0)))
    return torch.empty_like(nv).scatter_(-1, target, nv).view(B, P)


def _has_duplicates(phy: torch.Tensor, N: int, D: int) -> torch.Tensor:
    """phy [B, P] -> [B] some device holds an expert twice."""
    B, P = phy.shape
    dev = torch.arange(P).div(P // D, rounding_mode="floor").expand(B, P)
    per = torch.zeros(B, D * N, dtype=torch.int64).scatter_add_(1, dev * N + phy, torch.ones_like(phy))
    return (per > 1).any(1)


def score_points(points: torch.Tensor, old: torch.Tensor, w: torch.Tensor, ew: torch.Tensor,
                 num_devices: int) -> tuple[torch.Tensor, torch.Tensor]:
    """points [L, K, P], old [L, P], w [L, T, N], ew [L, T] -> (objective [L, K], moves [L, K]).

    objective: sum_t ew[t] * peak/avg of episode t (the solver's window objective); moves:
    slots whose expert differs from ``old``. All points of all layers in one batch.
    """
    L, K, P = points.shape
    T, N = w.shape[1], w.shape[2]
    wk = w.unsqueeze(1).expand(L, K, T, N).reshape(L * K, T, N)
    obj = weighted_peak_ratio(points.reshape(L * K, P), wk, ew.repeat_interleave(K, 0),
                              num_devices).view(L, K)
    moves = (points != old.unsqueeze(1)).sum(-1)
    return obj, moves


def _score(objective: torch.Tensor, moves: torch.Tensor, move_penalty: float,
           layer_penalty: float, refresh_penalty: float | None = None) -> torch.Tensor:
    """objective + move_penalty x moves (+ a tie-break to fewer) + layer_penalty where moves > 0;
    with ``refresh_penalty`` the moves of column 1 (the fresh plan) are priced at it instead."""
    m = moves.to(objective.dtype)
    price = torch.full_like(m, float(move_penalty))
    if refresh_penalty is not None and m.shape[1] > 1:
        price[:, 1] = float(refresh_penalty)
    return objective + (price + _TIE) * m + float(layer_penalty) * (m > 0).to(m.dtype)


def choose(objective: torch.Tensor, moves: torch.Tensor, move_penalty: float,
           max_moves: int | None = None, layer_penalty: float = 0.0,
           refresh_penalty: float | None = None) -> torch.Tensor:
    """Per layer, the candidate to serve: [L] index into K.

    objective, moves: [L, K]; column 0 must be "keep" (0 moves), column 1 the fresh plan when
    ``refresh_penalty`` is given. Without a budget each layer minimises objective + price x
    moves + layer_penalty if it moves at all (ties: fewer moves). The price of a move is
    ``move_penalty``, and ``refresh_penalty`` (None: the same) for the fresh plan's: a layer
    re-planned whole gains what its fresh plan beats the points near the placement in service
    by, a gain that is not noise fitted in the window (those points are fitted as much) and
    lasts beyond it. The layer penalty is the fixed price of touching a layer, which in-window
    gains of noise alone (a few hundredths of peak/avg) do not pay. With ``max_moves`` the
    layers' choices together minimise the sum of that with total moves <= max_moves: an exact
    multiple-choice knapsack by dynamic programming over the budget, so moves go where the
    gain per move is largest across layers.
    """
    L, K = objective.shape
    score = _score(objective, moves, move_penalty, layer_penalty, refresh_penalty)
    free = score.argmin(1)
    if max_moves is None or L == 0:
        return free
    if int(moves.gather(1, free.unsqueeze(1)).sum()) <= max_moves:
        return free
    if bool((moves[:, 0] != 0).any()):
        raise ValueError("choose: column 0 must be the placement in service (0 moves)")
    B = int(max_moves)
    inf = float("inf")
    best = torch.full((B + 1,), 0.0, dtype=torch.float64)  # best[b]: layers so far, <= b moves
    pick = torch.zeros(L, B + 1, dtype=torch.int64)
    for layer in range(L):
        nxt = torch.full((B + 1,), inf, dtype=torch.float64)
        arg = torch.zeros(B + 1, dtype=torch.int64)
        for k in range(K):
            m = int(moves[layer, k])
            if m > B:
                continue
            cand = torch.full((B + 1,), inf, dtype=torch.float64)
            cand[m:] = best[: B + 1 - m] + float(score[layer, k])
            better = cand < nxt
            nxt = torch.where(better, cand, nxt)
            arg = torch.where(better, torch.full_like(arg, k), arg)
        best = nxt
        pick[layer] = arg
    out = torch.zeros(L, dtype=torch.int64)
    b = B
    for layer in range(L - 1, -1, -1):
        k = int(pick[layer, b])
        out[layer] = k
        b -= int(moves[layer, k])
    return out


def _polish(starts: torch.Tensor, old: torch.Tensor, w: torch.Tensor, ew: torch.Tensor, D: int,
            penalty: float, smoothing: float, seed: int, deadline: float | None) -> torch.Tensor:
    """The C++ local search from each start [L, K, P], paying ``penalty`` per slot moved from
    ``old`` [L, P]; kept experts back in their old slots. Returns [L, K, P]."""
    L, K, P = starts.shape
    limit = None if deadline is None else max(deadline - time.perf_counter(), 1e-3)
    # A layer's identical starts (the path's first point is often the old placement itself)
    # are searched once: without perturbation rounds the descent depends on its start only.
    same = (starts.unsqueeze(2) == starts.unsqueeze(1)).all(-1)  # [L, K, K]
    first = ~(same & torch.ones(K, K, dtype=torch.bool).tril(-1)).any(-1)  # [L, K]
    rows, cols = first.nonzero(as_tuple=True)
    ok = old[rows]
    found = joint_search(w[rows], ew[rows], init_slots=starts[rows, cols].contiguous(), anchor=ok,
                         num_devices=D, slots_per_device=P // D, smoothing=smoothing,
                         move_penalty=penalty, seed=seed, time_limit=limit).slots
    out = torch.empty(L, K, P, dtype=torch.int64)
    out[rows, cols] = keep_slots(found, ok, D)
    # Each repeated start takes the result of its first occurrence.
    src = (same & first.unsqueeze(1)).to(torch.int8).argmax(-1)  # [L, K]
    return out.gather(1, src.unsqueeze(-1).expand(L, K, P))


def replan(old: torch.Tensor, fresh: torch.Tensor, w: torch.Tensor, ew: torch.Tensor,
           num_devices: int, *, move_penalty: float, max_moves: int | None = None,
           layer_penalty: float = 0.0, refresh_penalty: float | None = None,
           smoothing: float = 0.05, seed: int = 0, deadline: float | None = None,
           fractions=PATH_FRACTIONS) -> torch.Tensor:
    """phy2log [L, P] to serve, chosen among keep, the fresh plan and the points between.

    old: [L, P] the placement in service (duplicate-free, every expert placed); fresh: [L, P]
    a fresh plan aligned to it; w [L, T, N] normalised loads, ew [L, T]. Candidates per
    layer: keep, fresh, the path points (:func:`path_points`, and :func:`counts_point`, the
    fresh counts on the old placement) as they are and improved by the local search at
    ``move_penalty``; ``layer_penalty`` is paid once by a layer that moves at all, and the
    fresh plan's moves cost ``refresh_penalty`` each (:func:`choose`); under a budget also
    the search from ``old`` at dearer
    moves (:data:`BUDGET_LADDER`), which gives the frontier its points with few moves.
    The searches from the path's first point (``fractions[0]``, 0: ``old`` itself) and from
    the counts point run for every layer; those from the further points only where the
    fresh plan already beats them all on objective + penalty x moves (or under a budget):
    elsewhere the move penalty has never been seen to pick them, and they cost a third of
    the decision time.
    """
    pts = path_points(old, fresh, w, ew, num_devices, fractions)  # [L, K, P], k = 0: old
    raw = torch.cat([pts, counts_point(old, fresh, w, ew, num_devices).unsqueeze(1)], 1)
    near = dict(smoothing=smoothing, seed=seed, deadline=deadline)
    K = pts.shape[1]
    # First the searches from the placement in service and from the fresh counts on it: the
    # points with few moves, which a move penalty nearly always picks.
    close = _polish(raw[:, [0, K]], old, w, ew, num_devices, move_penalty, **near)
    cands = torch.cat([old.unsqueeze(1), fresh.unsqueeze(1), raw[:, 1:], close], 1)
    obj, moves = score_points(cands, old, w, ew, num_devices)
    more = []
    if K > 1:
        # The searches from the points further on, only for the layers where they can pay:
        # the fresh plan beats every candidate so far (moving far is worth its moves there),
        # or a budget is shared (the knapsack weighs every frontier point).
        # (at the plain move price: a refresh price picks the fresh plan itself, not these)
        score = _score(obj, moves, move_penalty, layer_penalty)
        far = score[:, 1] < torch.cat([score[:, :1], score[:, 2:]], 1).amin(1)
        if max_moves is not None:
            far = torch.ones_like(far)
        further = raw[:, 1:K].clone()  # layers that skip the search keep the raw points
        rows = far.nonzero().flatten()
        if rows.numel():
            further[rows] = _polish(raw[rows, 1:K], old[rows], w[rows], ew[rows], num_devices,
                                    move_penalty, **near)
        more.append(further)
    if max_moves is not None:
        base = max(float(move_penalty), LADDER_BASE)
        for factor in BUDGET_LADDER:
            more.append(_polish(old.unsqueeze(1), old, w, ew, num_devices, base * factor, **near))
    if more:
        extra = torch.cat(more, 1)
        o2, m2 = score_points(extra, old, w, ew, num_devices)
        cands, obj, moves = torch.cat([cands, extra], 1), torch.cat([obj, o2], 1), torch.cat([moves, m2], 1)
    pick = choose(obj, moves, move_penalty, max_moves, layer_penalty, refresh_penalty)
    L, P = old.shape
    return cands.gather(1, pick.view(L, 1, 1).expand(L, 1, P)).squeeze(1)
