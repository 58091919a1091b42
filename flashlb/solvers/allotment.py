"""Replica allotment: how many replicas each expert gets, batched over problems.

The plain min-max allotment lives with the objective (:func:`flashlb.objective.allot_replicas`);
this module scores count vectors before any placement (a packing bound) and searches them.
"""

from __future__ import annotations

import time

import torch

__all__ = ["packing_bound", "refine_counts", "all_allotments", "best_allotments"]


def packing_bound(loads: torch.Tensor, weights: torch.Tensor, counts: torch.Tensor,
                  num_devices: int) -> torch.Tensor:
    """A lower bound on the objective that replica counts allow, before any placement.

    loads: [B, T, N] (each episode's device average 1), weights: [B, T], counts: [B, K, N]
    candidate counts (sum P) -> [B, K] sum_t weights[t] * bound_t. Per episode, with replica
    loads sorted x_0 >= x_1 >= ... >= x_{P-1} and S = P / D slots per device, the peak is at
    least the average, 1, and:

    - of the m*D + 1 largest replicas some device holds m + 1 (m = 0 .. S - 1): its load is at
      least the m + 1 smallest of those plus the S - m - 1 smallest replicas overall;
    - of the D + j largest, the devices holding two or more take j of them beyond the first
      ("tails"), each device at most S - 1. Give each device's largest ("head") with its
      largest tail: at best the j smallest of the D + j are the tails, the S - 1 largest
      tails going to the smallest head, the next S - 1 to the next head, and so on. So some
      device holds x_{D-1-r//(S-1)} + x_{D+r} for every r < P - D, plus S - 2 others.
      (With two slots per device the heads take one tail each; with more, one head can
      take several, which is why pairing each head with one tail was no bound there.)
    """
    B, T, N = loads.shape
    K = counts.shape[1]
    D = num_devices
    P = int(counts[0, 0].sum())
    S = P // D
    # Expert of each replica: the position of each slot index among the cumulative counts.
    ends = counts.cumsum(-1)  # [B, K, N]
    idx = torch.searchsorted(ends, torch.arange(P).expand(B, K, P).contiguous(), right=True)
    per = loads.unsqueeze(1) / counts.unsqueeze(2).to(loads.dtype)  # [B, K, T, N]
    items = per.gather(3, idx.unsqueeze(2).expand(B, K, T, P))
    x = items.sort(-1, descending=True).values
    cs = torch.nn.functional.pad(x.cumsum(-1), (1, 0))  # cs[..., i] = sum of the i largest
    m = torch.arange(S)
    top = cs[..., m * D + 1] - cs[..., m * D - m]  # x_{mD-m} .. x_{mD} (0-based)
    small = cs[..., P : P + 1] - cs[..., P - (S - 1 - m)]
    bound = (top + small).amax(-1)
    if S >= 2:
        r = torch.arange(P - D)
        heads, tails = D - 1 - r // (S - 1), D + r
        pairs = (x[..., heads] + x[..., tails]).amax(-1)
        bound = torch.maximum(bound, pairs + cs[..., P] - cs[..., P - (S - 2)])
    bound = bound.clamp_min(1.0)  # [B, K, T]
    return (bound * weights.unsqueeze(1)).sum(-1)


def all_allotments(N: int, P: int, D: int, limit: int) -> torch.Tensor | None:
    """Every count vector (1 <= c <= D, sum P) as [C, N], or None when there are more than limit."""
    # ways[e][r]: count vectors for experts e.. summing to r
    ways = [[0] * (P + 1) for _ in range(N + 1)]
    ways[N][0] = 1
    for e in range(N - 1, -1, -1):
        for r in range(P + 1):
            ways[e][r] = sum(ways[e + 1][r - c] for c in range(1, min(D, r) + 1))
    if ways[0][P] > limit:
        return None
    out = []

    def rec(e, left, prefix):
        if e == N:
            out.append(prefix)
            return
        for c in range(1, min(D, left) + 1):
            if ways[e + 1][left - c]:
                rec(e + 1, left - c, prefix + [c])

    rec(0, P, [])
    return torch.tensor(out, dtype=torch.int64)


def best_allotments(loads: torch.Tensor, weights: torch.Tensor, num_physical: int, num_devices: int,
                    k: int, limit: int = 4096) -> torch.Tensor | None:
    """The k count vectors with the lowest packing bound, from all of them: [B, k, N].

    A tree search whose every leaf is scored by the look-ahead bound; only for problems
    whose count vectors number at most ``limit`` (else None).
    """
    B, T, N = loads.shape
    allc = all_allotments(N, num_physical, num_devices, limit)
    if allc is None:
        return None
    mean = (loads * weights.unsqueeze(-1)).sum(1)
    cand = allc.unsqueeze(0).expand(B, -1, -1)
    score = packing_bound(loads, weights, cand, num_devices)
    score = score + 1e-9 * (mean.unsqueeze(1).square() / cand.to(loads.dtype)).sum(-1)
    top = score.topk(min(k, allc.shape[0]), dim=1, largest=False).indices
    return allc[top]


def refine_counts(loads: torch.Tensor, weights: torch.Tensor, counts: torch.Tensor, num_devices: int,
                  *, max_steps: int = 32, max_neighbours: int = 256,
                  deadline: float | None = None) -> torch.Tensor:
    """Hill-climb replica counts on :func:`packing_bound`, batched over problems.

    loads: [B, T, N], weights: [B, T], counts: [B, N] -> [B, N]. A step moves one replica from an
    expert with >= 2 to one below the cap D; it is taken when it lowers the bound (ties: the
    smaller sum of squared replica loads, i.e. finer-grained replicas). Candidates are the
    experts with the largest per-replica loads, at most ``max_neighbours`` moves per step.
    deadline: a ``time.perf_counter()`` instant after which no step starts (the counts so far
    are returned): with many small problems the steps can take seconds, more than a
    ``time_budget``.
    """
    B, T, N = loads.shape
    D = num_devices
    mean = (loads * weights.unsqueeze(-1)).sum(1)  # [B, N]
    k = max(1, min(N, int(max_neighbours ** 0.5)))
    c = counts.clone()
    rows = torch.arange(B)

    def score(cand):  # [B, K, N] -> [B, K]
        b = packing_bound(loads, weights, cand, D)
        fine = (mean.unsqueeze(1).square() / cand.to(loads.dtype)).sum(-1)
        return b + 1e-9 * fine

    cur = score(c.unsqueeze(1))[:, 0]
    for _ in range(max_steps):
        if deadline is not None and time.perf_counter() >= deadline:
            break
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
