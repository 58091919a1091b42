"""The default two-stage EPLB greedy, our own implementation of the well-known algorithm.

1. Allotment: each extra replica goes to the expert with the highest per-replica load.
2. Placement: replicas, heaviest first, go to the least-loaded device that has a free slot.

The hierarchical variant first packs expert groups onto nodes (for group-limited routing),
then runs both stages inside each node. It is the yardstick every benchmark prints beside
FlashLB. It may place two replicas of one expert on one device; FlashLB never does.
All functions are batched over their leading dimension (layers).
"""

from __future__ import annotations

import torch

__all__ = ["replicate", "balanced_packing", "groups_to_nodes", "greedy_global",
           "greedy_hierarchical"]


def replicate(weight: torch.Tensor, num_physical: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Min-max-replica allotment.

    weight: [X, N] float -> (phy2log [X, P]: expert of each replica, the N originals first;
    logcnt [X, N]).  Ties go to the lowest expert id.
    """
    X, N = weight.shape
    phy2log = torch.empty(X, num_physical, dtype=torch.int64)
    phy2log[:, :N] = torch.arange(N)
    logcnt = torch.ones(X, N, dtype=torch.int64)
    rows = torch.arange(X)
    for p in range(N, num_physical):
        e = (weight / logcnt).argmax(-1)
        phy2log[:, p] = e
        logcnt[rows, e] += 1
    return phy2log, logcnt


def balanced_packing(weight: torch.Tensor, num_packs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Heaviest item first onto the lightest pack that still has room.

    weight: [X, M] with M % num_packs == 0 -> (pack [X, M], rank_in_pack [X, M]).
    Ties keep item order and choose the lowest pack id. The sequential loop runs in C++
    (``torch.ops.flashlb.balanced_packing``), in parallel over rows.
    """
    from .. import ops  # noqa: F401  (registers torch.ops.flashlb.*)

    return torch.ops.flashlb.balanced_packing(weight.to(torch.float64).contiguous(), int(num_packs))


def _pack_replicas(weight: torch.Tensor, num_physical: int, num_devices: int) -> torch.Tensor:
    """weight: [X, N] -> phy2log [X, P] by replicate + balanced_packing."""
    X, N = weight.shape
    S = num_physical // num_devices
    rep, cnt = replicate(weight, num_physical)
    per_replica = (weight / cnt).gather(1, rep)
    pack, rank = balanced_packing(per_replica, num_devices)
    phy2log = torch.empty_like(rep)
    phy2log.scatter_(1, pack * S + rank, rep)
    return phy2log


def greedy_global(weight: torch.Tensor, num_physical: int, num_devices: int) -> torch.Tensor:
    """weight: [L, N] float64 -> phy2log [L, P] (replicas may repeat on a device)."""
    return _pack_replicas(weight, num_physical, num_devices)


def greedy_hierarchical(weight: torch.Tensor, num_physical: int, num_groups: int,
                        num_nodes: int, num_devices: int) -> torch.Tensor:
    """Groups to nodes, then allotment and placement inside each node.

    weight: [L, N] float64 -> phy2log [L, P]. Needs N % num_groups == 0,
    num_groups % num_nodes == 0, num_devices % num_nodes == 0, P % num_devices == 0.
    """
    L, N = weight.shape
    M = num_nodes
    mlog2log = groups_to_nodes(weight, num_groups, M)
    # Each node is an independent two-stage problem on its N / M experts.
    node_weight = weight.gather(1, mlog2log).view(L * M, N // M)
    node_phy = _pack_replicas(node_weight, num_physical // M, num_devices // M)
    return nodes_to_layer(node_phy, mlog2log, M)


def groups_to_nodes(weight: torch.Tensor, num_groups: int, num_nodes: int) -> torch.Tensor:
    """Pack expert groups onto nodes, heaviest group first.

    weight: [L, N] -> mlog2log [L, N]: the experts in node-major order, node m owning
    entries [m * N / M, (m + 1) * N / M).
    """
    L, N = weight.shape
    G, M = num_groups, num_nodes
    gsize = N // G
    gpack, grank = balanced_packing(weight.view(L, G, gsize).sum(-1), M)
    first = (gpack * (G // M) + grank) * gsize  # [L, G]: first node-major id of each group
    log2mlog = (first.unsqueeze(-1) + torch.arange(gsize)).flatten(1)  # [L, N]
    mlog2log = torch.empty_like(log2mlog)
    mlog2log.scatter_(1, log2mlog, torch.arange(N).expand(L, N))
    return mlog2log


def nodes_to_layer(node_phy: torch.Tensor, mlog2log: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """node_phy: [L * M, P / M] node-local expert ids -> phy2log [L, P] logical ids."""
    L, N = mlog2log.shape
    M = num_nodes
    node_phy = node_phy.view(L, M, -1) + (torch.arange(M) * (N // M)).view(1, M, 1)
    return mlog2log.gather(1, node_phy.flatten(1))
