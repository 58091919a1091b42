"""A few weighted scenarios in place of many episodes, for the search's inner loop.

The search's moves cost time in proportion to the episodes. A window of many episodes
holds far fewer distinct load patterns, so the search runs on representative scenarios -
the weighted centroids of a k-means clustering of each layer's normalised episodes, each
weighing what its episodes weigh - and the caller scores the result on every episode.
"""

from __future__ import annotations

import torch

__all__ = ["MAX_SCENARIOS", "reduce_episodes"]

# Up to this many episodes are searched as they are; beyond it, clustered to this many.
MAX_SCENARIOS = 16


def reduce_episodes(loads: torch.Tensor, weights: torch.Tensor, max_scenarios: int = MAX_SCENARIOS,
                    iterations: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """loads [B, T, N] (normalised episodes), weights [B, T] -> ([B, K, N], [B, K]), K <= max.

    With T <= max_scenarios the input is returned as it is. Otherwise, per problem, weighted
    k-means (Lloyd's iterations, deterministic: seeded with episodes evenly spaced in time,
    so drift is covered) groups the episodes; each scenario is the weighted mean of its
    group's loads and weighs the group's total weight. Episodes of weight 0 (without load)
    join no scenario's weight. A scenario's device loads average 1 like an episode's, and
    its peak never exceeds the weighted mean of its episodes' peaks (a max is convex), so
    the clustered objective is a slight underestimate that the caller corrects by scoring
    the result on every episode.
    """
    B, T, N = loads.shape
    K = int(max_scenarios)
    if T <= K:
        return loads, weights
    seeds = torch.linspace(0, T - 1, K).round().to(torch.int64)
    centres = loads[:, seeds].clone()  # [B, K, N]
    w = weights.unsqueeze(-1)  # [B, T, 1]
    for step in range(iterations + 1):
        # nearest centre: |x - c|^2 = |x|^2 - 2 x.c + |c|^2, the first term shared by all c
        dist = centres.square().sum(-1).unsqueeze(1) - 2 * torch.einsum("btn,bkn->btk", loads, centres)
        member = torch.nn.functional.one_hot(dist.argmin(-1), K).to(loads.dtype) * w  # [B, T, K]
        mass = member.sum(1)  # [B, K]
        sums = torch.einsum("btk,btn->bkn", member, loads)
        # An empty scenario keeps its centre while iterating and weighs 0 at the end.
        keep = centres if step < iterations else torch.zeros_like(centres)
        centres = torch.where(mass.unsqueeze(-1) > 0, sums / mass.clamp_min(1e-300).unsqueeze(-1), keep)
    return centres.contiguous(), mass.contiguous()
