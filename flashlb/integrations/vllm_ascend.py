"""vllm-ascend: a dynamic-EPLB policy with the contract of its policy factory.

``rebalance_experts(current_expert_table [L, D, S], expert_workload [stages, L, D, S] or
[L, D, S])`` -> ``(changed, priority_layers, new_expert_table [L, D, S])``: whether anything
changed, the re-placed layers most gain first, and the full new table. The workload is per
physical slot, as vllm-ascend measures it; each stage is one episode. Cherry-picking and the
fewest moves are inside (a :class:`flashlb.Balancer` kept across calls).
"""

from __future__ import annotations

import torch

from ..placement import Placement
from ..redeploy.balancer import Balancer
from . import logical_load

__all__ = ["FlashLBPolicy"]


class FlashLBPolicy:
    """Constructed with no arguments; keeps its balancer state across calls.

    Keyword options (all optional) go to :class:`flashlb.Balancer`.
    """

    def __init__(self, config=None, **balancer_options):
        self.config = config  # vllm-ascend hands its dynamic-EPLB config to policies; unused
        self.balancer_options = balancer_options
        self.balancer: Balancer | None = None

    def rebalance_experts(self, current_expert_table: torch.Tensor, expert_workload: torch.Tensor):
        table = torch.as_tensor(current_expert_table)
        if table.dim() != 3:
            raise ValueError(f"current_expert_table must be [L, D, S], got {tuple(table.shape)}")
        load = torch.as_tensor(expert_workload)
        if load.dim() == 3:
            load = load.unsqueeze(0)
        if load.dim() != 4 or load.shape[1:] != table.shape:
            raise ValueError(f"expert_workload must be [stages, L, D, S] or [L, D, S] matching the "
                             f"table {tuple(table.shape)}, got {tuple(expert_workload.shape)}")
        L, D, S = table.shape
        N = int(table.max()) + 1
        current = Placement.from_device_view(table.to(torch.int64).cpu(), N)
        hotness = logical_load(load, table, N)  # [stages, L, N]
        if self.balancer is None:
            self.balancer = Balancer(D * S, D, **self.balancer_options)
        up = self.balancer.step(hotness, current)
        new_table = up.placement.device_view().to(table.dtype)
        return up.changed, up.layers.tolist(), new_table
