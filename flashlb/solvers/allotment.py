"""Replica allotment: how many replicas each expert gets, batched over layers."""

from __future__ import annotations

import torch

__all__ = ["allot_replicas", "packing_bound", "refine_counts"]


def allot_replicas(weight: torch.Tensor, num_physical: int, max_replicas: int) -> torch.Tensor:
    """Min-max-replica allotment with a cap.

    weight: [X, N] float -> logcnt [X, N] int64 with 1 <= logcnt <= max_replicas and rows
    summing to num_physical. Each extra replica goes to the expert with the largest
    per-replica load among those below the cap, which minimises the largest per-replica load.
    Ties go to the lowest expert id. Needs N <= num_physical <= N * max_replicas.
    """
    X, N = weight.shape
    w = weight.to(torch.float64)
    cnt = torch.ones(X, N, dtype=torch.int64)
    rows = torch.arange(X)
    below = torch.full_like(w, -1.0)
    for _ in range(num_physical - N):
        per = torch.where(cnt < max_replicas, w / cnt, below)
        cnt[rows, per.argmax(-1)] += 1
    return cnt


def packing_bound(w: torch.Tensor, ew: torch.Tensor, counts: torch.Tensor, num_devices: int) -> torch.Tensor:
    """Look-ahead estimate of the best peak that replica counts allow, before any placement.

    w: [B, T, N] loads (each episode's device average 1), ew: [B, T], counts: [B, K, N]
    candidate counts (sum P) -> [B, K] sum_t ew[t] * bound_t. Per episode, with replica loads
    sorted x_1 >= ... >= x_P and S = P / D slots per device: of the m*D + 1 largest replicas some
    device holds m + 1, plus S - m - 1 others, so its load is at least the m + 1 smallest of
    those plus the S - m - 1 smallest overall (m = 0 .. S - 1); and at least the average, 1.
    """
    B, T, N = w.shape
    K = counts.shape[1]
    D = num_devices
    P = int(counts[0, 0].sum())
    S = P // D
    # Expert of each replica: the position of each slot index among the cumulative counts.
    ends = counts.cumsum(-1)  # [B, K, N]
    idx = torch.searchsorted(ends, torch.arange(P).expand(B, K, P).contiguous(), right=True)
    per = w.unsqueeze(1) / counts.unsqueeze(2).to(w.dtype)  # [B, K, T, N]
    items = per.gather(3, idx.unsqueeze(2).expand(B, K, T, P))
    x = items.sort(-1, descending=True).values
    cs = torch.nn.functional.pad(x.cumsum(-1), (1, 0))  # cs[..., i] = sum of the i largest
    m = torch.arange(S)
    top = cs[..., m * D + 1] - cs[..., m * D - m]  # x_{mD-m+1} .. x_{mD+1} (1-based)
    small = cs[..., P : P + 1] - cs[..., P - (S - 1 - m)]
    bound = (top + small).amax(-1).clamp_min(1.0)  # [B, K, T]
    return (bound * ew.unsqueeze(1)).sum(-1)


def refine_counts(w: torch.Tensor, ew: torch.Tensor, counts: torch.Tensor, num_devices: int,
                  *, max_steps: int = 32, max_neighbours: int = 256) -> torch.Tensor:
    """Hill-climb replica counts on :func:`packing_bound`, batched over problems.

    w: [B, T, N], ew: [B, T], counts: [B, N] -> [B, N]. A step moves one replica from an
    expert with >= 2 to one below the cap D; it is taken when it lowers the bound (ties: the
    smaller sum of squared replica loads, i.e. finer-grained replicas). Candidates are the
    experts with the largest per-replica loads, at most ``max_neighbours`` moves per step.
    """
    B, T, N = w.shape
    D = num_devices
    mean = (w * ew.unsqueeze(-1)).sum(1)  # [B, N]
    k = max(1, min(N, int(max_neighbours ** 0.5)))
    c = counts.clone()
    rows = torch.arange(B)

    def score(cand):  # [B, K, N] -> [B, K]
        b = packing_bound(w, ew, cand, D)
        fine = (mean.unsqueeze(1).square() / cand.to(w.dtype)).sum(-1)
        return b + 1e-9 * fine

    cur = score(c.unsqueeze(1))[:, 0]
    for _ in range(max_steps):
        per = mean / c
        # donors: heaviest per-replica among those with spare replicas; takers: heaviest below cap
        donors = torch.where(c >= 2, per, torch.full_like(per, -1.0)).topk(k, -1).indices
        takers = torch.where(c < D, per, torch.full_like(per, -1.0)).topk(k, -1).indices
        x = donors.unsqueeze(2).expand(B, k, k).reshape(B, -1)
        y = takers.unsqueeze(1).expand(B, k, k).reshape(B, -1)
        ok = (x != y) & (c.gather(1, x) >= 2) & (c.gather(1, y) < D)
        cand = c.unsqueeze(1).repeat(1, x.shape[1], 1)
        cand.scatter_add_(2, x.unsqueeze(-1), -torch.ones_like(x).unsqueeze(-1))
        cand.scatter_add_(2, y.unsqueeze(-1), torch.ones_like(y).unsqueeze(-1))
        cand = torch.where(ok.unsqueeze(-1), cand, c.unsqueeze(1))
        s = torch.where(ok, score(cand), torch.full_like(cur.unsqueeze(1).expand(-1, x.shape[1]), float("inf")))
        best, arg = s.min(1)
        better = best < cur - 1e-12
        if not bool(better.any()):
            break
        c = torch.where(better.unsqueeze(1), cand[rows, arg], c)
        cur = torch.where(better, best, cur)
    return c
