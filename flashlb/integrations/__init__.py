"""Drop-in policies for serving stacks. No stack is a dependency: each adapter follows its
stack's published contract, imports the stack only where it plugs into it (registration,
install functions), and flashlb stays installable without vLLM, vllm-ascend or SGLang.

- :class:`flashlb.integrations.vllm.FlashLBEplbPolicy` - vLLM's EPLB policy (an
  ``AbstractEplbPolicy`` where vLLM is importable); ``vllm.plugin`` is the
  ``vllm.general_plugins`` entry point.
- :class:`flashlb.integrations.vllm_ascend.FlashLBPolicy` - vllm-ascend's dynamic-EPLB policy,
  served in its multi-stage slot (type 3) by the same plugin when ``FLASHLB_VLLM_ASCEND=1``.
- :func:`flashlb.integrations.sglang.rebalance_experts` - an SGLang EPLB algorithm;
  ``sglang.install`` / the ``sglang.srt.plugins`` entry point plug it into SGLang's dispatch.
"""

from __future__ import annotations

import torch

__all__ = ["logical_load"]


def logical_load(physical_load: torch.Tensor, table: torch.Tensor, num_experts: int | None = None) -> torch.Tensor:
    """Loads per physical slot -> loads per logical expert.

    physical_load: [..., L, D, S] (vllm-ascend's per-slot workload, optionally with a leading
    stage dimension) or [..., L, P]; table: [L, D, S] or [L, P] expert of each slot.
    Returns [..., L, N] (float64); replicas of one expert are summed.
    """
    if not isinstance(physical_load, torch.Tensor) or not isinstance(table, torch.Tensor):
        raise TypeError("physical_load and table must be torch tensors")
    if table.dim() not in (2, 3):
        raise ValueError(f"table must be [L, D, S] or [L, P], got {tuple(table.shape)}")
    if physical_load.dim() < table.dim() or tuple(physical_load.shape[-table.dim():]) != tuple(table.shape):
        raise ValueError(
            f"physical_load {tuple(physical_load.shape)} does not end in the table's shape {tuple(table.shape)}")
    L = table.shape[0]
    flat_table = table.reshape(L, -1).to(torch.int64).cpu()
    P = flat_table.shape[1]
    lead = physical_load.shape[: physical_load.dim() - table.dim()]
    x = physical_load.reshape(-1, L, P).to(torch.float64).cpu()
    if bool((flat_table < 0).any()):
        raise ValueError("table holds a negative expert id (an empty slot)")
    N = int(flat_table.max()) + 1 if num_experts is None else int(num_experts)
    out = torch.zeros(x.shape[0], L, N, dtype=torch.float64)
    out.scatter_add_(2, flat_table.unsqueeze(0).expand_as(x), x)
    return out.reshape(*lead, L, N)
