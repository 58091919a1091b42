"""Align a new placement to the one in service so that as few slots as possible change.

Device loads do not depend on which physical device gets which set of experts, nor on the
slot order inside a device; both are chosen here to keep experts where they already are:
devices are matched by a maximum-weight assignment on the number of experts they share
(torch.ops.flashlb.max_assignment, batched over layers), then each kept expert takes its old
slot on its device.
"""

from __future__ import annotations

import torch

from . import ops  # noqa: F401  (registers torch.ops.flashlb.max_assignment)
from ._checks import check_int
from .placement import Placement

__all__ = ["align_to"]


def _device_counts(dv: torch.Tensor, num_experts: int) -> torch.Tensor:
    """dv: [L, D, S] -> [L, D, N] replicas of each expert on each device."""
    L, D, S = dv.shape
    out = torch.zeros(L, D, num_experts, dtype=torch.float64)
    return out.scatter_add_(2, dv, torch.ones(L, D, S, dtype=torch.float64))


def _shared(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a: [B, X, N], b: [B, Y, N] replica counts -> [B, X, Y] sum_e min(a, b).

    min(a, b) = sum_k [a >= k][b >= k]: one batched product per replica level.
    """
    out = torch.zeros(a.shape[0], a.shape[1], b.shape[1], dtype=torch.float64)
    for k in range(1, int(min(a.max(), b.max())) + 1):
        out += torch.bmm((a >= k).to(torch.float64), (b >= k).to(torch.float64).transpose(1, 2))
    return out


def _permute(groups: torch.Tensor, match: torch.Tensor) -> torch.Tensor:
    """groups [B, G, ...], match [B, G]: group i goes to position match[i]."""
    out = torch.empty_like(groups)
    idx = match.view(*match.shape, *([1] * (groups.dim() - 2))).expand_as(groups)
    return out.scatter_(1, idx, groups)


def _align_devices(nv: torch.Tensor, ov: torch.Tensor, N: int) -> torch.Tensor:
    """nv, ov: [B, D, S] -> nv with devices and slots permuted to keep most of ov in place."""
    S = nv.shape[2]
    match = torch.ops.flashlb.max_assignment(_shared(_device_counts(nv, N), _device_counts(ov, N)))
    placed = _permute(nv, match)  # placed[j] = the new device matched to old device j
    # Inside each device: an expert the old slot j held stays at j; the rest fill the free slots.
    eq = placed.unsqueeze(-1) == ov.unsqueeze(-2)  # [B, D, S_new, S_old]
    # Each old slot keeps at most one equal new slot (duplicates: the first one).
    first = eq & (eq.cumsum(-2) == 1)
    first = first & (first.cumsum(-1) == 1)
    kept_new = first.any(-1)  # new slot i keeps its old position
    target = first.to(torch.int64).argmax(-1)  # its old position
    taken = first.any(-2)  # old slot j is reused
    # Free slots, ascending, handed to the remaining new slots in order.
    free_rank = (~taken).cumsum(-1) - 1
    free_slots = torch.where(~taken, free_rank, torch.full_like(free_rank, S))
    order = free_slots.argsort(dim=-1, stable=True)
    rest_rank = (~kept_new).cumsum(-1) - 1
    target = torch.where(kept_new, target, order.gather(-1, rest_rank.clamp_min(0)))
    return torch.empty_like(placed).scatter_(-1, target, placed)


def align_to(new: Placement, old: Placement, num_nodes: int = 1) -> Placement:
    """``new`` with its devices and slots permuted to keep the most experts of ``old`` in place.

    The device loads of ``new`` are unchanged. With ``num_nodes`` > 1 devices move only as
    whole nodes (matched first) or within a node, so a hierarchical placement stays one.
    """
    if not isinstance(new, Placement) or not isinstance(old, Placement):
        raise TypeError("align_to: new and old must be flashlb.Placement objects")
    if new.phy2log.shape != old.phy2log.shape or new.num_devices != old.num_devices:
        raise ValueError("align_to: the placements differ in layers, slots or devices")
    if new.num_experts != old.num_experts:
        raise ValueError("align_to: the placements differ in their number of experts")
    N, D, S, L = new.num_experts, new.num_devices, new.slots_per_device, new.num_layers
    M = check_int(num_nodes, "num_nodes")
    if D % M != 0:
        raise ValueError(f"num_nodes={M} must divide the number of devices {D}")
    nv = new.device_view().cpu().view(L, M, D // M, S)
    ov = old.device_view().cpu().view(L, M, D // M, S)
    if M > 1:
        nodes_new = _device_counts(nv.reshape(L, M, -1), N)
        nodes_old = _device_counts(ov.reshape(L, M, -1), N)
        nv = _permute(nv, torch.ops.flashlb.max_assignment(_shared(nodes_new, nodes_old)))
    out = _align_devices(nv.reshape(L * M, D // M, S), ov.reshape(L * M, D // M, S), N)
    return Placement.from_phy2log(out.reshape(L, D * S).to(new.phy2log.device), N, D)
