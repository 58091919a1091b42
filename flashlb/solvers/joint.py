"""The FlashLB solver: joint replica allotment and placement over episodes.

Batched over layers (and nodes) in torch: candidate replica counts (plain, risk-weighted and
look-ahead allotments), selection of the best candidate per layer and the comparison with the
default greedy. The sequential part - build a placement for each candidate, then improve
counts and placement together by swap and shift moves - runs in C++
(:func:`flashlb.solvers.search.joint_search`), in parallel over problems.

:func:`solve` takes one of two paths, each a function of its own:

- :func:`plan_fresh`: a fresh search, over whole layers or, with nodes, per node;
- :func:`plan_near_previous`: a plan that weighs moves away from the placement in service;

and then :func:`greedy_fallback` keeps the default greedy's placement for any layer where it
scores better, so no path is worse than the greedy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..align import align_to
from ..objective import allot_replicas, episode_weights, normalise_episodes, weighted_peak_ratio
from ..placement import Placement
from .allotment import all_allotments, best_allotments, refine_counts
from .greedy import greedy_global, greedy_hierarchical, groups_to_nodes, nodes_to_layer
from .replan import choose, replan, score_points
from .scenarios import MAX_SCENARIOS, reduce_episodes
from .search import joint_search

__all__ = ["solve", "plan_fresh", "plan_near_previous", "greedy_fallback", "SearchSettings"]

# z-score of the 75th percentile of a normal: the risk weight mean + Z * std covers a bad
# quarter of episodes without chasing outliers.
RISK_Z = 0.674


@dataclass(frozen=True)
class SearchSettings:
    """How hard and how long the search works; passed to every path explicitly.

    deadline: a ``time.perf_counter()`` instant, or None for no limit.
    exhaustive: the problem is small enough for the extra candidate counts and a second,
    unsmoothed search (:func:`small_problem`); judged on whole layers, so the node problems
    of a hierarchical plan of a large layer do not each get a small problem's effort.
    """

    seed: int = 0
    smoothing: float = 0.05
    perturb_rounds: int = 0
    deadline: float | None = None
    exhaustive: bool = False

    def time_left(self) -> float | None:
        """Seconds left (at least 1 ms), or None without a deadline."""
        if self.deadline is None:
            return None
        return max(self.deadline - time.perf_counter(), 1e-3)


def small_problem(L: int, P: int, T: int) -> bool:
    """Whether L layers of P slots and T scenarios get a small problem's effort: extra
    candidate counts, searches with and without smoothing, perturbation rounds. Only where
    each layer is small (the look-ahead sorts every candidate's replicas) and the call as a
    whole is too: a whole model must take milliseconds (48 layers of 144 slots took 2.4 s)."""
    return P * T <= 256 and L * P * T <= 1024


def _candidates(loads: torch.Tensor, weights: torch.Tensor, P: int, D: int, *,
                exhaustive: bool, deadline: float | None = None) -> torch.Tensor:
    """Candidate replica counts [B, K, N] for loads [B, T, N], weights [B, T].

    Min-max allotments on the mean load and, with several episodes, on a risk weight; then
    the packing look-ahead refinement of the first. Large problems keep one candidate: the
    local search's shift moves adjust counts there, and a whole model must take milliseconds.
    """
    B, T, N = loads.shape
    mean = (loads * weights.unsqueeze(-1)).sum(1)
    if T > 1:
        std = ((loads - mean.unsqueeze(1)).square() * weights.unsqueeze(-1)).sum(1).sqrt()
        base = allot_replicas(mean + RISK_Z * std, P, D)
    else:
        base = allot_replicas(mean, P, D)
    cands = [base]
    if P * T <= 4096 and T > 1:
        cands.append(allot_replicas(mean, P, D))
    if exhaustive:
        cands.append(refine_counts(loads, weights, base, D, deadline=deadline))
        best = best_allotments(loads, weights, P, D, k=4, limit=2048)
        if best is not None:
            cands.extend(best.unbind(1))
        screened = _screened_allotments(loads, weights, P, D, k=2)
        if screened is not None:
            cands.extend(screened.unbind(1))
    return torch.stack(cands, 1)


def _screened_allotments(loads: torch.Tensor, weights: torch.Tensor, P: int, D: int, *, k: int,
                         limit: int = 512, budget: int = 16384) -> torch.Tensor | None:
    """The counts of the k best placements found by one quick search (no perturbation, no
    smoothing) from every count vector: [B, k, N], or None when there are too many.

    The packing bound ranks count vectors before any placement; where the rules bind (few
    experts, several slots per device) the best one can rank far down, so small problems
    are also screened by what a placement actually reaches.
    """
    B, T, N = loads.shape
    allc = all_allotments(N, P, D, limit)
    if allc is None or B * allc.shape[0] > budget:
        return None
    C = allc.shape[0]
    found = joint_search(loads.repeat_interleave(C, 0), weights.repeat_interleave(C, 0),
                         counts=allc.repeat(B, 1), num_devices=D, slots_per_device=P // D,
                         smoothing=0.0)
    top = found.peak_ratio.view(B, C).topk(min(k, C), dim=1, largest=False).indices  # [B, k]
    counts = found.counts.view(B, C, N)
    return counts.gather(1, top.unsqueeze(-1).expand(-1, -1, N))


def _auto_rounds(L: int, P: int, T: int) -> int:
    """Perturbation rounds when none are given: many for small problems, where the search is
    cheap and the exact optimum is within reach, none for a whole model."""
    work = P * max(T, 1)
    if not small_problem(L, P, max(T, 1)):
        return 0
    if work <= 64:
        return 400
    if work <= 160:
        return 100
    return 0


def search_fresh(loads: torch.Tensor, weights: torch.Tensor, P: int, D: int,
                 settings: SearchSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """Best fresh placement per problem over the candidate counts.

    loads: [B, T, N], weights: [B, T] -> (slots [B, P], weighted peak ratio [B]).
    """
    B, T, N = loads.shape
    S = P // D
    cands = _candidates(loads, weights, P, D, exhaustive=settings.exhaustive,
                        deadline=settings.deadline)  # [B, K, N]
    K = cands.shape[1]
    # Identical candidates of one problem are searched once.
    keep = torch.ones(B, K, dtype=torch.bool)
    for k in range(1, K):
        keep[:, k] = ~(cands[:, k : k + 1] == cands[:, :k]).all(-1).any(-1)
    bi, ki = keep.nonzero(as_tuple=True)
    # The smoothing term helps the descent off plateaus but can also steer it past the best
    # peaks; small problems are cheap, so they are searched without it as well.
    twice = settings.smoothing > 0 and settings.exhaustive
    smoothings = [settings.smoothing] + ([0.0] if twice else [])
    R = len(smoothings)
    peak = torch.full((B, R * K), float("inf"), dtype=torch.float64)
    smooth = torch.full((B, R * K), float("inf"), dtype=torch.float64)
    slots = torch.empty(B, R * K, P, dtype=torch.int64)
    for r, smoothing in enumerate(smoothings):
        found = joint_search(loads[bi], weights[bi], counts=cands[bi, ki], num_devices=D,
                             slots_per_device=S, smoothing=smoothing,
                             perturb_rounds=settings.perturb_rounds, seed=settings.seed + r,
                             time_limit=settings.time_left())
        peak[bi, r * K + ki] = found.peak_ratio
        smooth[bi, r * K + ki] = found.objective
        slots[bi, r * K + ki] = found.slots
    # Best per problem on the peaks; the smoothing term only breaks ties.
    near_best = peak <= peak.amin(1, keepdim=True) + 1e-12
    best = torch.where(near_best, smooth, torch.full_like(smooth, float("inf"))).argmin(1)
    out = slots[torch.arange(B), best]
    ratio = peak.gather(1, best.unsqueeze(1)).squeeze(1)
    # Anytime: with a deadline, keep perturbing every problem in fair waves until time is up.
    wave = 1
    while settings.deadline is not None and time.perf_counter() < settings.deadline - 2e-3:
        again = joint_search(loads, weights, init_slots=out, num_devices=D, slots_per_device=S,
                             smoothing=settings.smoothing,
                             perturb_rounds=max(settings.perturb_rounds, 8),
                             seed=settings.seed + 7919 * wave, time_limit=settings.time_left())
        better = again.peak_ratio < ratio - 1e-12
        out[better] = again.slots[better]
        ratio = torch.where(better, again.peak_ratio, ratio)
        wave += 1
    return out, ratio


def _search_per_node(loads: torch.Tensor, weights: torch.Tensor, P: int, D: int,
                     num_groups: int, num_nodes: int, settings: SearchSettings) -> torch.Tensor:
    """Groups packed onto nodes, then each node searched as its own problem -> phy2log [L, P]."""
    L, T, N = loads.shape
    M = num_nodes
    mean = (loads * weights.unsqueeze(-1)).sum(1)
    mlog2log = groups_to_nodes(mean, num_groups, M)  # [L, N] experts in node-major order
    node_loads = loads.gather(2, mlog2log.unsqueeze(1).expand(L, T, N))
    node_loads = node_loads.view(L, T, M, N // M).permute(0, 2, 1, 3).reshape(L * M, T, N // M)
    node_slots, _ = search_fresh(node_loads, weights.repeat_interleave(M, 0), P // M, D // M,
                                 settings)
    return nodes_to_layer(node_slots, mlog2log, M)


def plan_fresh(loads: torch.Tensor, weights: torch.Tensor, P: int, D: int, *,
               num_groups: int | None, num_nodes: int, settings: SearchSettings) -> torch.Tensor:
    """A fresh search of every layer: phy2log [L, P] for loads [L, T, N], weights [L, T]."""
    if num_nodes > 1:
        return _search_per_node(loads, weights, P, D, num_groups, num_nodes, settings)
    return search_fresh(loads, weights, P, D, settings)[0]


def plan_near_previous(loads: torch.Tensor, weights: torch.Tensor, previous: Placement, *,
                       num_groups: int | None, num_nodes: int, move_penalty: float,
                       settings: SearchSettings, max_moves: int | None = None,
                       layer_penalty: float = 0.0, refresh_penalty: float | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """A plan that weighs peak/avg against moves from ``previous`` -> (phy2log [L, P], price [L]).

    loads: [L, T, N], weights: [L, T]; previous: the placement in service (L layers, CPU).
    Each layer keeps ``previous``, takes the fresh plan aligned to it, or a point between
    them (:mod:`flashlb.solvers.replan`), whichever scores least on
    ``weighted peak/avg + move_penalty * moved slots`` (+ ``layer_penalty`` if any slot
    moves; the fresh plan's moves at ``refresh_penalty`` when given); with ``max_moves`` the layers share
    that many moved slots in all, spent where they gain most. Layers of ``previous`` that
    hold an expert twice on a device take the fresh plan (aligned), outside the budget; with
    nodes (hierarchical) each layer keeps or takes the fresh plan, as points between would
    not keep groups on their nodes. price: what each layer's chosen moves cost apiece
    (``refresh_penalty`` where it took the fresh plan, else ``move_penalty``).
    """
    L, T, N = loads.shape
    P, D, M = previous.num_physical, previous.num_devices, num_nodes
    fresh = plan_fresh(loads, weights, P, D, num_groups=num_groups, num_nodes=M,
                       settings=settings)
    fresh = align_to(Placement.from_phy2log(fresh, N, D), previous, M).phy2log
    old = previous.phy2log.to(torch.int64)
    doubled = previous.has_duplicates()
    rows = (~doubled).nonzero().flatten()
    refresh = float(move_penalty if refresh_penalty is None else refresh_penalty)
    price = torch.full((L,), refresh, dtype=torch.float64)  # doubled layers take the fresh plan
    if rows.numel() == 0:
        return fresh, price
    budget = None if max_moves is None else max(
        int(max_moves) - int((fresh != old)[doubled].sum()), 0)
    out = fresh.clone()
    if M > 1:
        cands = torch.stack([old[rows], fresh[rows]], 1)
        objective, moves = score_points(cands, old[rows], loads[rows], weights[rows], D)
        pick = choose(objective, moves, move_penalty, budget, layer_penalty, refresh_penalty)
        out[rows] = cands[torch.arange(rows.numel()), pick]
        price[rows] = float(move_penalty)
        price[rows[pick == 1]] = refresh
        return out, price
    chosen = replan(old[rows], fresh[rows], loads[rows], weights[rows], D,
                    move_penalty=move_penalty, max_moves=budget, layer_penalty=layer_penalty,
                    refresh_penalty=refresh_penalty, smoothing=settings.smoothing,
                    seed=settings.seed, deadline=settings.deadline)
    took_fresh = (chosen == fresh[rows]).all(1) & (chosen != old[rows]).any(1)
    price[rows] = float(move_penalty)
    price[rows[took_fresh]] = refresh
    # A point the local search improved may have its devices in another order than the
    # placement in service; relabelling them keeps the loads and never adds a move.
    out[rows] = align_to(Placement.from_phy2log(chosen, N, D), previous.select_layers(rows)).phy2log
    return out, price


def greedy_fallback(phy2log: torch.Tensor, greedy: torch.Tensor, loads: torch.Tensor,
                    weights: torch.Tensor, num_devices: int, *, previous: Placement | None = None,
                    move_penalty: float | torch.Tensor = 0.0, num_nodes: int = 1,
                    layer_penalty: float = 0.0, refresh_penalty: float | None = None) -> torch.Tensor:
    """Per layer, the default greedy's placement where it scores better and is duplicate-free.

    phy2log, greedy: [L, P]; loads: [L, T, N], weights: [L, T]. The score is the weighted
    peak/avg; when ``previous`` is given, plus the price of each slot that differs from it
    and ``layer_penalty`` where any does. Our slots cost ``move_penalty`` (a float, or [L] the
    price each layer's moves were chosen at); the greedy's placement, a whole re-plan first
    aligned to ``previous`` (whole nodes kept whole), pays ``refresh_penalty`` (None: the same).
    """
    N, D = loads.shape[2], num_devices
    g = Placement.from_phy2log(greedy, N, D)
    admissible = ~g.has_duplicates()
    if not bool(admissible.any()):
        return phy2log
    if previous is not None:
        g = align_to(g, previous, num_nodes)
    ours = weighted_peak_ratio(phy2log, loads, weights, D)
    theirs = weighted_peak_ratio(g.phy2log, loads, weights, D)
    if previous is not None:
        old = previous.phy2log.to(torch.int64)
        mine, other = (phy2log != old).sum(1), (g.phy2log != old).sum(1)
        whole = move_penalty if refresh_penalty is None else refresh_penalty
        ours = ours + move_penalty * mine + layer_penalty * (mine > 0)
        theirs = theirs + whole * other + layer_penalty * (other > 0)
    take = admissible & (theirs < ours - 1e-12)
    return torch.where(take.unsqueeze(1), g.phy2log, phy2log)


def _check_options(smoothing, move_penalty, perturb_rounds, seed, L, P, T, layer_penalty=0.0,
                   refresh_penalty=0.0) -> int:
    """Checks the search options; returns the number of perturbation rounds."""
    for name, v in (("smoothing", smoothing), ("move_penalty", move_penalty),
                    ("layer_penalty", layer_penalty), ("refresh_penalty", refresh_penalty)):
        if not (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < float("inf")):
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    if perturb_rounds is None:
        return _auto_rounds(L, P, T)
    if isinstance(perturb_rounds, int) and not isinstance(perturb_rounds, bool) and perturb_rounds >= 0:
        return perturb_rounds
    raise ValueError(f"perturb_rounds must be an int >= 0, got {perturb_rounds!r}")


def solve(hotness: torch.Tensor, num_physical: int, num_devices: int, *, num_groups=None,
          num_nodes: int = 1, time_budget: float | None = None, seed: int = 0,
          recency_half_life: float | None = None, previous: Placement | None = None,
          move_penalty: float = 0.0, max_moves: int | None = None, smoothing: float = 0.05,
          perturb_rounds: int | None = None, weights: torch.Tensor | None = None,
          layer_penalty: float = 0.0, refresh_penalty: float | None = None) -> Placement:
    """FlashLB placement for every layer.

    hotness: [T, L, N] float64 CPU loads (checked by the caller, as are the sizes).
    num_groups / num_nodes > 1: hierarchical (groups packed onto nodes, then each node solved).
    previous: the placement in service (CPU), whose moves cost ``move_penalty`` each (those of
    a layer re-planned whole ``refresh_penalty``, None: the same), and each layer that moves
    at all ``layer_penalty``.
    weights: optional [T] or per-layer [T, L] episode weights (flashlb.forecast, workloads),
    instead of those of recency_half_life.
    Returns a duplicate-free Placement. Per layer, its score - the weighted per-episode
    peak/avg, plus ``move_penalty`` per slot moved from ``previous`` when given - is never
    above that of the default greedy's placement, wherever the latter is duplicate-free.
    max_moves (with ``previous``): at most that many slots moved in all; the greedy's
    placement, which ignores the budget, is then not a fallback.
    """
    start = time.perf_counter()
    T, L, N = hotness.shape
    P, D, M = num_physical, num_devices, num_nodes
    # Effort follows the size of whole layers and of the call: a hierarchical plan splits each
    # layer into node problems, which are many and would each look small.
    S = min(T, MAX_SCENARIOS)
    rounds = _check_options(smoothing, move_penalty, perturb_rounds, seed, L, P, S, layer_penalty,
                            0.0 if refresh_penalty is None else refresh_penalty)
    settings = SearchSettings(seed=seed, smoothing=float(smoothing), perturb_rounds=rounds,
                              deadline=None if time_budget is None else start + float(time_budget),
                              exhaustive=small_problem(L, P, S))
    if weights is None:
        weights = episode_weights(T, recency_half_life)
    loads, weights = normalise_episodes(hotness, D, weights)
    # The search sees at most MAX_SCENARIOS weighted scenarios; the fallback scores every episode.
    scenario_loads, scenario_weights = reduce_episodes(loads, weights)
    if previous is None:
        phy = plan_fresh(scenario_loads, scenario_weights, P, D, num_groups=num_groups,
                         num_nodes=M, settings=settings)
    else:
        phy, price = plan_near_previous(
            scenario_loads, scenario_weights, previous, num_groups=num_groups, num_nodes=M,
            move_penalty=float(move_penalty), settings=settings, max_moves=max_moves,
            layer_penalty=float(layer_penalty),
            refresh_penalty=None if refresh_penalty is None else float(refresh_penalty))
        if max_moves is not None:
            return Placement.from_phy2log(phy, N, D)
    summed = hotness.sum(0)
    greedy = (greedy_hierarchical(summed, P, num_groups, M, D) if M > 1
              else greedy_global(summed, P, D))
    phy = greedy_fallback(phy, greedy, loads, weights, D, previous=previous,
                          move_penalty=float(move_penalty) if previous is None else price,
                          num_nodes=M, layer_penalty=float(layer_penalty),
                          refresh_penalty=None if refresh_penalty is None else float(refresh_penalty))
    return Placement.from_phy2log(phy, N, D)
