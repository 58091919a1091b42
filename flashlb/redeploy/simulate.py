"""Replay a load trace through cycles of record -> decide -> apply, for several policies."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import metrics
from .._checks import as_hotness, check_int, check_sizes
from ..api import plan
from ..ops import episode_stats
from .balancer import Balancer

__all__ = ["simulate", "SimulationResult", "POLICIES"]

POLICIES = ("cherry-pick", "every-cycle", "default")


@dataclass(frozen=True)
class SimulationResult:
    """ratio: [S'] per-step peak/avg (mean over layers) for the steps after the first cycle;
    moves / layers: [C] slots moved and layers re-placed at each decision."""

    policy: str
    ratio: torch.Tensor
    moves: torch.Tensor
    layers: torch.Tensor

    @property
    def mean_ratio(self) -> float:
        return float(self.ratio.mean())

    @property
    def total_moves(self) -> int:
        return int(self.moves.sum())


def simulate(trace: torch.Tensor, num_physical: int, num_devices: int, *, cycle_len: int,
             episode_len: int = 16, policies=POLICIES, balancer_options: dict | None = None,
             progress=None, **plan_options) -> dict[str, SimulationResult]:
    """Replay ``trace [S, L, N]`` (per-step loads, or per-episode with episode_len=1).

    Every ``cycle_len`` steps each policy decides on the window just seen (cut into episodes
    of ``episode_len`` steps) and its placement serves the next window:
    "cherry-pick" (a :class:`Balancer`), "every-cycle" (FlashLB re-plans every layer, aligned
    to the old placement) and "default" (the greedy re-plans every layer). All start from
    the default greedy's placement for the first window. ``progress(i, n)`` is called per cycle.
    """
    h = as_hotness(trace).cpu()
    S, L, N = h.shape
    C = check_int(cycle_len, "cycle_len")
    E = check_int(episode_len, "episode_len")
    if S < 2 * C:
        raise ValueError(f"trace has {S} steps: at least two cycles of cycle_len={C} are needed")
    check_sizes(N, num_physical, num_devices)
    unknown = set(policies) - set(POLICIES)
    if unknown:
        raise ValueError(f"unknown policies {sorted(unknown)}; choose from {POLICIES}")
    cycles = S // C
    first = plan(h[:C].sum(0), num_physical, num_devices, algorithm="default")
    state = {p: first for p in policies}
    balancer = Balancer(num_physical, num_devices, **(balancer_options or {}), **plan_options)
    ratios = {p: [] for p in policies}
    moves = {p: [] for p in policies}
    touched = {p: [] for p in policies}
    for c in range(cycles - 1):
        window = h[c * C:(c + 1) * C]
        episodes = episode_stats(window, min(E, C))[0].to(torch.float64)
        for p in policies:
            cur = state[p]
            if p == "cherry-pick":
                up = balancer.step(episodes, cur)
                new, layers = up.placement, up.layers.numel()
            elif p == "every-cycle":
                new = plan(episodes, num_physical, num_devices, previous=cur, **plan_options)
                layers = L
            else:
                new = plan(window.sum(0), num_physical, num_devices, algorithm="default")
                layers = L
            moves[p].append(int(metrics.moves(cur, new).sum()))
            touched[p].append(layers)
            state[p] = new
            nxt = h[(c + 1) * C:(c + 2) * C]
            ratios[p].append(metrics.peak_avg_ratio(metrics.device_loads(new, nxt)).mean(-1))
        if progress is not None:
            progress(c + 1, cycles - 1)
    return {p: SimulationResult(p, torch.cat(ratios[p]), torch.tensor(moves[p]), torch.tensor(touched[p]))
            for p in policies}
