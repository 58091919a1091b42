"""The C++ joint search (``torch.ops.flashlb.joint_search``, host/solver) behind a typed call.

The search takes one start per problem - replica counts to build a placement for, or a
placement to improve - and returns the best placement it found with its figures.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .. import ops  # noqa: F401  (registers torch.ops.flashlb.joint_search)

__all__ = ["SearchResult", "joint_search"]


class SearchResult(NamedTuple):
    """What :func:`joint_search` returns, per problem b."""

    slots: torch.Tensor       # [B, P] int64: expert of each slot (device p // slots_per_device)
    counts: torch.Tensor      # [B, N] int64: replicas of each expert
    peak_ratio: torch.Tensor  # [B] float64: sum_t episode_weights * peak device load
    objective: torch.Tensor   # [B] float64: peak_ratio + smoothing and move terms
    moves: torch.Tensor       # [B] int64: slots that differ from the anchor (0 without one)


def joint_search(loads: torch.Tensor, episode_weights: torch.Tensor, *, num_devices: int,
                 slots_per_device: int, counts: torch.Tensor | None = None,
                 init_slots: torch.Tensor | None = None, anchor: torch.Tensor | None = None,
                 smoothing: float = 0.05, move_penalty: float = 0.0, perturb_rounds: int = 0,
                 seed: int = 0, time_limit: float | None = None) -> SearchResult:
    """Joint replica allotment and placement for B independent problems, in parallel.

    loads: [B, T, N] float64, each episode scaled so its device average is 1;
    episode_weights: [B, T] float64. Exactly one start: ``counts`` [B, N] int64 (1 <= c <= D,
    rows summing to P = num_devices * slots_per_device; a placement is built for them) or
    ``init_slots`` [B, P] int64 (the search starts from that placement and its counts; every
    expert on 1 to D slots).
    anchor: [B, P] the placement in service; each slot that differs costs ``move_penalty``.
    time_limit: seconds for the whole call, None for no limit. Deterministic for a given
    seed when there is no time limit.
    """
    if (counts is None) == (init_slots is None):
        raise ValueError("joint_search: give exactly one of counts= and init_slots=")
    if time_limit is not None and not time_limit > 0:
        raise ValueError(f"joint_search: time_limit must be > 0 seconds or None, got {time_limit!r}")
    slots, out_counts, stats = torch.ops.flashlb.joint_search(
        loads, episode_weights, counts=counts, init_slots=init_slots, anchor=anchor,
        num_devices=int(num_devices), slots_per_device=int(slots_per_device),
        smoothing=float(smoothing), move_penalty=float(move_penalty),
        perturb_rounds=int(perturb_rounds), seed=int(seed),
        time_limit=None if time_limit is None else float(time_limit))
    return SearchResult(slots, out_counts, stats[:, 0], stats[:, 1], stats[:, 2].to(torch.int64))
