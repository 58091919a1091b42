"""Replay a load trace through decision cycles, as a serving engine lives it.

Protocol: the trace is cut into episodes. Every ``cycle`` episodes each policy decides on the
last ``window`` episodes, the placement it returns serves the next ``cycle`` episodes and is
judged there, per episode (peak/avg per layer and episode, averaged). Every policy starts
from :func:`boot_placement`, the map a server boots with. Moves are slots whose expert changed
(one expert-weight transfer each); every policy's new plan is aligned to the placement in
service (:func:`flashlb.align_to`), so move counts are fair.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .. import metrics
from .._checks import as_hotness, check_int, check_sizes
from ..api import check_plan_options, plan
from ..placement import Placement
from ..align import align_to
from .balancer import Balancer

__all__ = ["simulate", "SimulationResult", "POLICIES", "boot_placement"]

POLICIES = ("balancer", "fresh", "forecast", "previous", "default", "static", "clairvoyant")
POLICY_HELP = {
    "balancer": "flashlb.Balancer (balancer_options): cherry-picked layers, few moves",
    "fresh": "flashlb.plan on the window every cycle, every layer, aligned to the map in service",
    "forecast": "as fresh, planned on the forecast's scenarios (forecast=True)",
    "previous": "flashlb.plan(previous=in service, move_penalty=0) every cycle",
    "default": "the default greedy every cycle, aligned to the map in service",
    "static": "flashlb.plan once, at the first decision, then kept",
    "clairvoyant": "flashlb.plan on the episodes it is judged on (the limit, not a policy)",
}


def boot_placement(num_layers: int, num_experts: int, num_physical: int,
                   num_devices: int) -> Placement:
    """The map a server boots with, before any statistics: slot p holds expert p mod N in
    every layer (experts in order, then extra copies of the first ones)."""
    L = check_int(num_layers, "num_layers")
    N = check_int(num_experts, "num_experts")
    P, D = check_sizes(N, num_physical, num_devices)
    phy = (torch.arange(P, dtype=torch.int64) % N).expand(L, P).contiguous()
    return Placement.from_phy2log(phy, N, D)


@dataclass(frozen=True)
class SimulationResult:
    """One policy's run. ratio: [C, cycle] per-episode peak/avg (mean over layers) of the
    episodes each decision served; moves / layers: [C] slots moved and layers re-placed by
    each decision; seconds: [C] wall time of each decision."""

    policy: str
    ratio: torch.Tensor
    moves: torch.Tensor
    layers: torch.Tensor
    seconds: torch.Tensor

    @property
    def mean_ratio(self) -> float:
        """Mean per-episode peak/avg on the next windows."""
        return float(self.ratio.mean())

    @property
    def total_moves(self) -> int:
        return int(self.moves.sum())

    @property
    def seconds_per_decision(self) -> float:
        return float(self.seconds.mean())


def _episodes(trace: torch.Tensor, episode_len: int) -> torch.Tensor:
    """[S, L, N] steps -> [S // E, L, N] episode sums (a trailing partial episode is dropped)."""
    S = trace.shape[0] // episode_len * episode_len
    return trace[:S].view(-1, episode_len, *trace.shape[1:]).sum(1)


def simulate(trace: torch.Tensor, num_physical: int, num_devices: int, *, episode_len: int = 1,
             cycle: int = 8, window: int = 16, policies=POLICIES,
             balancer_options: dict | None = None, progress=None,
             **plan_options) -> dict[str, SimulationResult]:
    """Replay ``trace [S, L, N]`` (per-step loads cut into episodes of ``episode_len`` steps;
    1: the trace is per-episode already) for each of ``policies`` (see :data:`POLICY_HELP`).

    Decisions come every ``cycle`` episodes from episode ``window`` on, each seeing the last
    ``window`` episodes; there are ``(S / episode_len - window) // cycle`` of them.
    balancer_options go to :class:`Balancer`, plan_options to every :func:`flashlb.plan` call
    (and the Balancer's). ``progress(i, n)`` is called after each decision cycle.
    """
    h = as_hotness(trace, "trace").cpu()
    E = check_int(episode_len, "episode_len")
    C = check_int(cycle, "cycle")
    W = check_int(window, "window")
    for key in ("previous", "weights", "max_moves", "algorithm"):
        if key in plan_options:  # each policy decides these itself, decision by decision
            raise ValueError(f"simulate sets {key!r} per policy and decision; it is not a plan option here")
    check_plan_options(plan_options, "simulate")
    if isinstance(policies, str):
        policies = (policies,)
    unknown = sorted(set(policies) - set(POLICIES))
    if unknown or not policies:
        raise ValueError(f"policies must be chosen from {POLICIES}, got {unknown or 'none'}")
    ep = _episodes(h, E)
    T, L, N = ep.shape
    P, D = check_sizes(N, num_physical, num_devices)
    cycles = (T - W) // C if T >= W else 0
    if cycles < 1:
        raise ValueError(
            f"trace has {T} episodes of {E} steps: a decision needs window={W} episodes and "
            f"cycle={C} more to be judged on")
    balancer = None
    if "balancer" in policies:
        balancer = Balancer(P, D, **(balancer_options or {}), **plan_options)
    boot = boot_placement(L, N, P, D)
    state = {p: boot for p in policies}
    out = {p: {"ratio": [], "moves": [], "layers": [], "seconds": []} for p in policies}
    for c in range(cycles):
        t0 = W + c * C
        seen, nxt = ep[t0 - W:t0], ep[t0:t0 + C]
        for p in policies:
            cur = state[p]
            start = time.perf_counter()
            layers = L
            if p == "balancer":
                up = balancer.step(seen, cur)
                new, layers = up.placement, up.layers.numel()
            elif p in ("fresh", "forecast"):
                opts = dict(plan_options, forecast=True) if p == "forecast" else plan_options
                new = align_to(plan(seen, P, D, **opts), cur)
            elif p == "previous":
                new = plan(seen, P, D, previous=cur, **dict(plan_options, move_penalty=0.0))
            elif p == "default":
                new = align_to(plan(seen.sum(0), P, D, algorithm="default"), cur)
            elif p == "static":
                new = align_to(plan(seen, P, D, **plan_options), cur) if c == 0 else cur
                layers = L if c == 0 else 0
            else:  # clairvoyant
                new = align_to(plan(nxt, P, D, **plan_options), cur)
            r = out[p]
            r["seconds"].append(time.perf_counter() - start)
            r["moves"].append(int(metrics.moves(cur, new).sum()))
            r["layers"].append(layers)
            r["ratio"].append(metrics.peak_avg_ratio(metrics.device_loads(new, nxt)).mean(-1))
            state[p] = new
        if progress is not None:
            progress(c + 1, cycles)
    return {p: SimulationResult(p, torch.stack(r["ratio"]), torch.tensor(r["moves"]),
                                torch.tensor(r["layers"]), torch.tensor(r["seconds"], dtype=torch.float64))
            for p, r in out.items()}
