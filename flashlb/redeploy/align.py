"""Align a new placement to the one in service so that as few slots as possible change.

Device loads do not depend on which physical device gets which set of experts, nor on the
slot order inside a device; both are chosen here to keep experts where they already are:
devices are matched by a maximum-weight assignment on the number of experts they share
(torch.ops.flashlb.max_assignment, batched over layers), then each kept expert takes its old
slot on its device.
"""

from __future__ import annotations

import torch

from ..placement import Placement

__all__ = ["align_to"]


def _device_counts(dv: torch.Tensor, num_experts: int) -> torch.Tensor:
    """dv: [L, D, S] -> [L, D, N] replicas of each expert on each device."""
    L, D, S = dv.shape
    out = torch.zeros(L, D, num_experts, dtype=torch.float64)
    return out.scatter_add_(2, dv, torch.ones(L, D, S, dtype=torch.float64))


def align_to(new: Placement, old: Placement) -> Placement:
    """``new`` with its devices and slots permuted to keep the most experts of ``old`` in place.

    The device loads of ``new`` are unchanged; ``metrics.moves(old, result)`` is minimal over
    device and slot permutations of ``new``.
    """
    if new.phy2log.shape != old.phy2log.shape or new.num_devices != old.num_devices:
        raise ValueError("align_to: the placements differ in layers, slots or devices")
    N, D, S = new.num_experts, new.num_devices, new.slots_per_device
    L = new.num_layers
    nv = new.device_view().cpu()
    ov = old.device_view().cpu()
    # shared[l, i, j] = sum_e min(a[i, e], b[j, e]): experts new device i and old device j have
    # in common; min(a, b) = sum_k [a >= k][b >= k], one batched product per replica level.
    a, b = _device_counts(nv, N), _device_counts(ov, N)
    shared = torch.zeros(L, D, D, dtype=torch.float64)
    for k in range(1, int(min(a.max(), b.max())) + 1):
        shared += torch.bmm((a >= k).to(torch.float64), (b >= k).to(torch.float64).transpose(1, 2))
    match = torch.ops.flashlb.max_assignment(shared)  # new device i -> old device match[i]
    placed = torch.empty_like(nv)
    placed.scatter_(1, match.unsqueeze(-1).expand(L, D, S), nv)  # placed[j] = new device matched to j
    # Inside each device: an expert the old slot j held stays at j; the rest fill the free slots.
    eq = placed.unsqueeze(-1) == ov.unsqueeze(-2)  # [L, D, S_new, S_old]
    # Each old slot keeps at most one equal new slot (duplicates: the first one).
    first = eq & (eq.cumsum(-2) == 1)
    first = first & (first.cumsum(-1) == 1)
    kept_new = first.any(-1)  # new slot i keeps its old position
    target = first.to(torch.int64).argmax(-1)  # its old position
    taken = first.any(-2)  # old slot j is reused
    # Free slots, ascending, handed to the remaining new slots in order.
    free_rank = (~taken).cumsum(-1) - 1  # rank among free slots
    free_slots = torch.where(~taken, free_rank, torch.full_like(free_rank, S))
    order = free_slots.argsort(dim=-1, stable=True)  # old slot ids of free slots first, by rank
    rest_rank = (~kept_new).cumsum(-1) - 1
    target = torch.where(kept_new, target, order.gather(-1, rest_rank.clamp_min(0)))
    out = torch.empty_like(placed)
    out.scatter_(-1, target, placed)
    phy = out.reshape(L, D * S).to(new.phy2log.device)
    return Placement.from_phy2log(phy, N, D)
