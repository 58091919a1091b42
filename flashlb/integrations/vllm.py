"""vLLM: an EPLB policy with the interface of ``vllm.distributed.eplb.policy``.

vLLM calls ``rebalance_experts(weight [L, N], num_replicas, num_groups, num_nodes,
num_ranks)`` and expects ``(physical_to_logical_map [L, P], logical_to_physical_map
[L, N, X], expert_count [L, N])``. The newer call also passes the placement in service
(``old_global_expert_indices [L, P]``); flashlb then keeps experts in place where it can.

To use it, register the class where vLLM looks up its EPLB policies (its policy mapping in
``vllm/distributed/eplb/policy``), e.g. ``EPLB_POLICIES["flashlb"] = FlashLBEplbPolicy``.
"""

from __future__ import annotations

import torch

from ..api import plan
from ..placement import Placement

__all__ = ["FlashLBEplbPolicy"]


class FlashLBEplbPolicy:
    """Stateless, like vLLM's own policies: every call is a pure function of its arguments."""

    #: extra keyword options for :func:`flashlb.plan` (e.g. ``time_budget``)
    options: dict = {}

    @classmethod
    def rebalance_experts(cls, weight: torch.Tensor, num_replicas: int, num_groups: int,
                          num_nodes: int, num_ranks: int,
                          old_global_expert_indices: torch.Tensor | None = None):
        previous = None
        if old_global_expert_indices is not None:
            previous = Placement.from_phy2log(old_global_expert_indices.cpu(), weight.shape[-1], num_ranks)
        p = plan(weight, num_replicas, num_ranks, num_groups=num_groups, num_nodes=num_nodes,
                 previous=previous, **cls.options)
        return p.as_tuple()
