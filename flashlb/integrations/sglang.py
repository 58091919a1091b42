"""SGLang: an EPLB algorithm function and its ``--init-expert-location`` file.

``rebalance_experts(tokens_per_expert [T, L, N] or [L, N], num_physical_experts,
num_local_physical_experts, num_groups, num_nodes)`` returns what SGLang's algorithms return:
``(physical_to_logical_map [L, P], logical_to_all_physical_map [L, N, X] -1 padded,
expert_count [L, N])``. To plug it in, add it to SGLang's ``eplb_algorithms`` dispatch, or
plan offline and start the server with ``--init-expert-location placement.json`` written by
:func:`write_init_expert_location` (or ``flashlb plan ... -o placement.json``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..api import plan
from ..placement import Placement

__all__ = ["rebalance_experts", "write_init_expert_location"]


def _plan(tokens_per_expert, num_physical_experts, num_local_physical_experts, num_groups,
          num_nodes, **options) -> Placement:
    if num_local_physical_experts < 1 or num_physical_experts % num_local_physical_experts:
        raise ValueError(
            f"num_local_physical_experts={num_local_physical_experts} must divide "
            f"num_physical_experts={num_physical_experts}")
    num_gpus = num_physical_experts // num_local_physical_experts
    return plan(tokens_per_expert, num_physical_experts, num_gpus, num_groups=num_groups,
                num_nodes=num_nodes, **options)


def rebalance_experts(tokens_per_expert: torch.Tensor, num_physical_experts: int,
                      num_local_physical_experts: int, num_groups: int | None, num_nodes: int,
                      **options):
    return _plan(tokens_per_expert, num_physical_experts, num_local_physical_experts,
                 num_groups, num_nodes, **options).as_tuple()


def write_init_expert_location(path, tokens_per_expert: torch.Tensor, num_physical_experts: int,
                               num_local_physical_experts: int, num_groups: int | None = None,
                               num_nodes: int = 1, **options) -> Path:
    """Plan and write ``{"physical_to_logical_map": ...}`` (atomically) for SGLang."""
    path = Path(path)
    _plan(tokens_per_expert, num_physical_experts, num_local_physical_experts, num_groups,
          num_nodes, **options).save(path)
    return path
