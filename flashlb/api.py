"""Entry points: :func:`plan` (rich API), :func:`plan_workloads` (a mix of workloads) and
:func:`rebalance_experts` (drop-in signature)."""

from __future__ import annotations

import inspect

import torch

from ._checks import (MAX_SECONDS, as_hotness, check_budget, check_groups, check_int, check_memory, check_number,
                      check_seed, check_sizes, check_tensor, scaled_to_max)
from .placement import Placement
from .solvers.greedy import greedy_global, greedy_hierarchical

__all__ = ["plan", "plan_workloads", "rebalance_experts", "ALGORITHMS"]

ALGORITHMS = ("flashlb", "default")


def _use_hierarchy(hierarchical, num_groups, num_nodes, algorithm) -> bool:
    """DeepSeek's rule for the default (groups divisible by nodes); FlashLB only across nodes."""
    if hierarchical is not None:
        if not isinstance(hierarchical, bool):
            raise ValueError(f"hierarchical must be True, False or None, got {hierarchical!r}")
        if hierarchical and (num_groups is None or num_groups % num_nodes != 0):
            raise ValueError(
                f"hierarchical=True needs num_groups divisible by num_nodes, got "
                f"num_groups={num_groups}, num_nodes={num_nodes}")
        return hierarchical
    if num_groups is None or num_groups % num_nodes != 0:
        return False
    return algorithm == "default" or num_nodes > 1


def _plan_bytes(T: int, L: int, N: int, P: int, D: int, with_previous: bool) -> int:
    """About the most memory a plan holds at once: normalised loads and per-slot loads of each
    episode, log2phy, the search's per-device expert flags (per thread), and, to align with a
    previous placement, per-device expert counts."""
    import os

    S = P // D
    nbytes = 8 * L * T * (3 * N + 4 * P) + 8 * L * N * min(D, P - N + 1)
    nbytes += (os.cpu_count() or 1) * (2 * D * N + 8 * P * T)
    if with_previous:
        nbytes += 16 * L * D * N + L * D * S * S
    return nbytes


def check_previous(previous, L: int, N: int, P: int, D: int, name: str = "previous") -> Placement:
    """The placement in service: every invariant but duplicate-freedom (the default greedy may
    put two replicas of an expert on one device), and the sizes of the plan."""
    if not isinstance(previous, Placement):
        raise TypeError(f"{name} must be a flashlb.Placement, got {type(previous).__name__}")
    try:
        previous.validate(allow_duplicates=True)
    except ValueError as exc:
        raise ValueError(f"{name} is not a valid placement: {exc}") from None
    if previous.phy2log.shape != (L, P) or previous.num_experts != N or previous.num_devices != D:
        raise ValueError(
            f"{name} must place {L} layers x {N} experts on {P} slots / {D} devices, got "
            f"{tuple(previous.phy2log.shape)} with N={previous.num_experts}, D={previous.num_devices}")
    return previous


def plan(hotness: torch.Tensor, num_physical: int, num_devices: int, *,
         algorithm: str = "flashlb", num_groups: int | None = None, num_nodes: int = 1,
         hierarchical: bool | None = None, time_budget: float | None = None, seed: int = 0,
         recency_half_life: float | None = None, previous: Placement | None = None,
         move_penalty: float = 0.0, max_moves: int | None = None, forecast: bool | dict = False,
         weights: torch.Tensor | None = None, layer_penalty: float = 0.0,
         refresh_penalty: float | None = None, **options) -> Placement:
    """Decide replica counts and placement for every layer.

    hotness: [L, N] (one window) or [T, L, N] (T episodes) loads per logical expert.
    num_physical: P slots in all, num_devices: D devices with P / D slots each.
    algorithm: "flashlb" (joint search, default) or "default" (two-stage greedy on the summed
    window). num_groups / num_nodes / hierarchical: group-limited routing; hierarchical=None
    follows DeepSeek's rule (groups divisible by nodes). time_budget: seconds for the anytime
    search. recency_half_life: episodes; the latest ones weigh more. previous / move_penalty:
    the placement in service and the cost of one moved slot, in units of peak/avg (FlashLB
    only); each layer keeps ``previous``, takes the fresh plan aligned to it, or a point
    between them, whichever has the least window peak/avg + move_penalty x moves.
    refresh_penalty: with ``previous``, the price of one moved slot when a layer takes its
    fresh plan whole (None: ``move_penalty``). Lower than ``move_penalty``, it re-plans a
    layer whole where the fresh plan beats every point near the placement in service by
    enough - a gain that is not noise fitted in the window, and lasts - while small
    repairs stay dear (see :class:`flashlb.Balancer`, whose defaults set both).
    layer_penalty: with ``previous``, the fixed price (peak/avg units) of re-placing a layer at
    all, paid once by each layer that moves a slot: gains below it are left alone (0: none).
    max_moves: at most this many slots changed in all (needs ``previous``), spent on the
    layers where they gain most. A layer of ``previous`` that holds an expert twice on one
    device takes the fresh plan whatever it moves (repairs are outside the budget; the rest
    of the budget goes to the other layers).
    forecast: plan on scenarios of the next window (FlashLB, several episodes): True uses
    ``flashlb.forecast.DEFAULT``, a dict gives :func:`flashlb.forecast.forecast_scenarios`
    options; False (the default, by measurement: see bench/serving.py) plans on the episodes.
    weights: optional [T] weights of the episodes (scenarios) in the objective.
    Returns a :class:`Placement` on the device of ``hotness``.
    """
    if not isinstance(algorithm, str) or algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    check_plan_options(options, "plan")  # a misspelt option fails here, not inside the search
    h = as_hotness(hotness)
    device = h.device
    T, L, N = h.shape
    P, D = check_sizes(N, num_physical, num_devices)
    check_memory(_plan_bytes(T, L, N, P, D, previous is not None), f"planning {L} layers x {N} "
                 f"experts x {T} episodes on {P} slots / {D} devices")
    # Plans do not depend on a layer's scale; at scale 1 sums neither overflow nor underflow.
    h = scaled_to_max(h.cpu())
    M = check_int(num_nodes, "num_nodes")
    if num_groups is not None:
        num_groups, _ = check_groups(N, D, num_groups, M)
    elif D % M != 0:
        raise ValueError(f"num_nodes={M} must divide num_devices={D}")
    hier = _use_hierarchy(hierarchical, num_groups, M, algorithm)
    if time_budget is not None:
        time_budget = check_number(time_budget, "time_budget", maximum=MAX_SECONDS, positive=True)
    seed = check_seed(seed)
    move_penalty = check_number(move_penalty, "move_penalty", maximum=1e6)
    layer_penalty = check_number(layer_penalty, "layer_penalty", maximum=1e6)
    if refresh_penalty is not None:
        refresh_penalty = check_number(refresh_penalty, "refresh_penalty", maximum=1e6)
    max_moves = check_budget(max_moves, "max_moves")
    if max_moves is not None:
        max_moves = min(max_moves, L * P)
        if previous is None:
            raise ValueError("max_moves needs previous (the placement in service)")
    if "smoothing" in options:
        options["smoothing"] = check_number(options["smoothing"], "smoothing", maximum=1e6)
    if options.get("perturb_rounds") is not None:
        options["perturb_rounds"] = check_int(options["perturb_rounds"], "perturb_rounds", 0)
        if options["perturb_rounds"] > 10**6:
            raise ValueError(f"perturb_rounds must be <= 10**6 (use time_budget for longer searches), "
                             f"got {options['perturb_rounds']}")
    fc = forecast_options(forecast)
    if weights is not None:
        if not isinstance(weights, torch.Tensor):
            raise TypeError("weights must be a torch.Tensor of shape [T]")
        check_tensor(weights, "weights")
        if weights.is_complex():
            raise ValueError(f"weights must be real numbers, got {weights.dtype}")
        weights = weights.detach().cpu().to(torch.float64)
        if weights.shape != (T,) or not bool(torch.isfinite(weights).all()) \
                or bool((weights < 0).any()) or not float(weights.sum()) > 0:
            raise ValueError(f"weights must be [T]=[{T}] finite, >= 0 and not all 0, got "
                             f"shape {tuple(weights.shape)}")
    if previous is not None:
        previous = check_previous(previous, L, N, P, D)
    if algorithm == "default":
        if options or previous is not None or move_penalty or layer_penalty \
                or refresh_penalty is not None or max_moves is not None or weights is not None:
            unknown = sorted(options) + [k for k, v in (("previous", previous),
                                                        ("move_penalty", move_penalty or None),
                                                        ("layer_penalty", layer_penalty or None),
                                                        ("refresh_penalty", refresh_penalty),
                                                        ("max_moves", max_moves),
                                                        ("weights", weights)) if v is not None]
            raise ValueError(f"algorithm='default' takes no options {unknown}")
        w = h.sum(0)
        if hier:
            phy = greedy_hierarchical(w, P, num_groups, M, D)
        else:
            phy = greedy_global(w, P, D)
        return Placement.from_phy2log(phy, N, D).to(device)

    from .solvers.joint import solve

    if hier and P // D > N // M:
        raise ValueError(
            f"hierarchical placement puts {N // M} experts on each node, fewer than the "
            f"{P // D} slots of one device: use hierarchical=False or more experts per node")
    from .objective import episode_weights

    base = episode_weights(T, recency_half_life) if weights is None else weights / weights.sum()
    weights = None if weights is None and fc is None else base
    if fc is not None and T > 1:
        # The hook: scenarios and weights of the next window replace the raw episodes.
        from .forecast import forecast_scenarios

        h, fw = forecast_scenarios(h, **fc)
        weights = fw * base.repeat(h.shape[0] // T).unsqueeze(1)  # [T', L]
    result = solve(h, P, D, num_groups=num_groups if hier else None, num_nodes=M if hier else 1,
                   time_budget=time_budget, seed=seed, recency_half_life=recency_half_life,
                   previous=previous.to("cpu") if previous is not None else None,
                   move_penalty=move_penalty, max_moves=max_moves, weights=weights,
                   layer_penalty=layer_penalty, refresh_penalty=refresh_penalty, **options)
    return result.to(device)


def plan_workloads(workloads, num_physical: int, num_devices: int, *,
                   weights=None, **options) -> Placement:
    """One placement for a mix of workloads (e.g. prefill and decode traffic, several
    request lengths): each workload is one scenario of the objective, so the plan holds up on
    all of them rather than on their sum.

    workloads: a sequence of K loads, each [L, N] or [T, L, N] (summed over its episodes).
    weights: optional K non-negative weights (how much each workload matters; equal if None).
    Other options go to :func:`plan` (the forecast is off: workloads are not a time series).
    """
    if isinstance(workloads, torch.Tensor) or not hasattr(workloads, "__len__") or len(workloads) == 0:
        raise TypeError("workloads must be a non-empty list of [L, N] or [T, L, N] tensors")
    scen = []
    for i, w in enumerate(workloads):
        scen.append(as_hotness(w, f"workloads[{i}]").cpu().sum(0))
    shapes = {tuple(s.shape) for s in scen}
    if len(shapes) != 1:
        raise ValueError(f"workloads must share one [L, N] shape, got {sorted(shapes)}")
    if weights is not None:
        try:
            weights = torch.as_tensor(weights, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"weights must hold one number per workload ({len(scen)}), got {weights!r}") from None
        if weights.shape != (len(scen),):
            raise ValueError(f"weights must hold one number per workload ({len(scen)}), got "
                             f"shape {tuple(weights.shape)}")
    if "forecast" in options:
        raise ValueError("plan_workloads takes no forecast option: workloads are not a time series")
    return plan(torch.stack(scen), num_physical, num_devices, forecast=False, weights=weights, **options)


def check_plan_options(options: dict, owner: str) -> None:
    """Refuse option names that :func:`plan` does not take, before any work: a misspelt one
    (``refresh_penalti``) would otherwise fail only inside the search, after the rest. Known:
    plan's keywords and those of the search it hands the others to."""
    from .solvers.joint import solve

    known = {k for f in (plan, solve) for k, p in inspect.signature(f).parameters.items()
             if p.kind is p.KEYWORD_ONLY}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"{owner}: unknown options {unknown}")


def forecast_options(forecast) -> dict | None:
    """plan's ``forecast`` argument as forecast_scenarios options, or None (off); checked in
    full (TypeError for another type, ValueError naming a bad option)."""
    from .forecast import DEFAULT, check_options

    if forecast is True:
        return dict(DEFAULT)
    if forecast is False or forecast is None:
        return None
    if not isinstance(forecast, dict):
        raise TypeError(f"forecast must be True, False or a dict of options, got {type(forecast).__name__}")
    unknown = sorted(set(forecast) - {"change_threshold", "level_half_life", "shrink", "keep_episodes",
                                       "min_segment", "persistence", "scenario_half_life"})
    if unknown:
        raise ValueError(f"forecast: unknown options {unknown}")
    merged = {**DEFAULT, **forecast}
    check_options(merged, "forecast[{!r}]")
    return merged


def rebalance_experts(weight: torch.Tensor, num_replicas: int, num_groups: int, num_nodes: int,
                      num_gpus: int, *, algorithm: str = "flashlb", **options):
    """Drop-in for the EPLB function of vLLM and DeepSeek.

    weight: [L, N] (or [T, L, N] per-episode) loads. Returns (phy2log [L, P], log2phy [L, N, R],
    logcnt [L, N]) int64 tensors; log2phy is -1 padded.
    """
    placement = plan(weight, num_replicas, num_gpus, algorithm=algorithm, num_groups=num_groups,
                     num_nodes=num_nodes, **options)
    return placement.as_tuple()
