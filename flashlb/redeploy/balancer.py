"""Balancer: the stateful object a serving engine holds between decision cycles.

Layer-wise cherry-picking: each cycle measures every layer's per-episode peak/avg under the
placement in service and re-plans only the layers that crossed a threshold - an absolute
ratio, or a relative degradation from what the layer showed in the first window after its
last placement (measured on the same kind of window, so the comparison is fair). The
re-planned layers stay close to their old placement (alignment, move penalty) and are
kept only when they gain; at most ``max_layers_per_cycle``, most gain first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .. import metrics
from .._checks import as_hotness, check_int, check_number, check_sizes
from .._files import atomic_write, read_data
from ..api import check_previous, plan
from ..placement import Placement

__all__ = ["Balancer", "Update"]


@dataclass(frozen=True)
class Update:
    """What one decision cycle decided.

    placement: the full new placement (layers not in ``layers`` identical to the old one);
    layers: [K] int64 re-placed layers, most gain first; moves: [L] slots changed per layer;
    before / after: [L] per-episode peak/avg of the window under the old / new placement;
    bytes_moved: weight bytes the moves transfer (when ``expert_bytes`` was given), else None.
    """

    placement: Placement
    layers: torch.Tensor
    moves: torch.Tensor
    before: torch.Tensor
    after: torch.Tensor
    bytes_moved: int | None

    @property
    def changed(self) -> bool:
        return self.layers.numel() > 0


class Balancer:
    """Decides, cycle after cycle, which layers to re-place and where.

    num_physical / num_devices: P slots on D devices. threshold: re-plan a layer whose
    per-episode peak/avg exceeds it. degradation: or whose ratio grew by this fraction over
    its reference (the first window after its last placement). min_gain: keep a re-plan only
    if it lowers the window's ratio by at least this much. max_layers_per_cycle: cap per
    cycle (None: no cap). move_penalty: cost of one moved slot in peak/avg units (see
    :func:`flashlb.plan`). expert_bytes: weight bytes of one expert, to report transfers.
    Other keyword options go to :func:`flashlb.plan`.
    """

    def __init__(self, num_physical: int, num_devices: int, *, threshold: float = 1.08,
                 degradation: float = 0.03, min_gain: float = 0.005,
                 max_layers_per_cycle: int | None = None, move_penalty: float = 3e-4,
                 expert_bytes: int | None = None, **plan_options):
        self.num_physical = check_int(num_physical, "num_physical")
        self.num_devices = check_int(num_devices, "num_devices")
        for name, v in (("threshold", threshold), ("degradation", degradation), ("min_gain", min_gain)):
            if not isinstance(v, (int, float)) or v != v or v < 0:
                raise ValueError(f"{name} must be a number >= 0, got {v!r}")
        if threshold < 1:
            raise ValueError(f"threshold must be >= 1 (a peak/avg ratio), got {threshold}")
        self.threshold = float(threshold)
        self.degradation = float(degradation)
        self.min_gain = float(min_gain)
        self.max_layers = None if max_layers_per_cycle is None else check_int(max_layers_per_cycle, "max_layers_per_cycle")
        self.move_penalty = check_number(move_penalty, "move_penalty", maximum=1e6)
        self.expert_bytes = None if expert_bytes is None else check_int(expert_bytes, "expert_bytes", 0)
        self.plan_options = plan_options
        self.reference: torch.Tensor | None = None  # [L]; NaN: not measured since last placed
        self.cycles = 0

    # ------------------------------------------------------------------ decisions
    def step(self, hotness: torch.Tensor, current: Placement) -> Update:
        """One decision cycle on the latest window. hotness: [T, L, N] or [L, N]."""
        h = as_hotness(hotness).cpu()
        T, L, N = h.shape
        check_sizes(N, self.num_physical, self.num_devices)
        # Every invariant of the placement in service, before any work.
        check_previous(current, L, N, self.num_physical, self.num_devices, "current")
        current = current.to("cpu")
        before = metrics.balance_ratio(current, h)
        if self.reference is None or self.reference.shape != (L,):
            self.reference = torch.full((L,), float("nan"), dtype=torch.float64)
        fresh = torch.isnan(self.reference)
        self.reference = torch.where(fresh, before, self.reference)  # first window after placing
        trigger = (before > self.threshold) | (before > self.reference * (1 + self.degradation))
        layers = trigger.nonzero().flatten()
        after = before.clone()
        new = current
        chosen = layers[:0]
        if layers.numel():
            cand = plan(h[:, layers], self.num_physical, self.num_devices,
                        previous=current.select_layers(layers), move_penalty=self.move_penalty,
                        **self.plan_options)
            ratio = metrics.balance_ratio(cand, h[:, layers])
            gain = before[layers] - ratio
            keep = gain >= self.min_gain
            order = gain[keep].argsort(descending=True, stable=True)
            if self.max_layers is not None:
                order = order[: self.max_layers]
            picked = keep.nonzero().flatten()[order]  # rows of cand, most gain first
            chosen = layers[picked]
            if chosen.numel():
                new = current.replace_layers(chosen, cand.select_layers(picked))
                after[chosen] = ratio[picked]
                self.reference[chosen] = float("nan")
        self.cycles += 1
        moves = metrics.moves(current, new)
        nbytes = None if self.expert_bytes is None else int(moves.sum()) * self.expert_bytes
        return Update(new, chosen, moves, before, after, nbytes)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Everything needed to resume: references per layer and the cycle count."""
        return {"reference": None if self.reference is None else self.reference.clone(),
                "cycles": self.cycles}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict, got {type(state).__name__}")
        ref = state.get("reference")
        if ref is not None and (not isinstance(ref, torch.Tensor) or ref.dim() != 1 or ref.is_meta
                                or ref.layout != torch.strided or ref.is_complex()):
            raise ValueError("state['reference'] must be a dense [L] real tensor or None")
        cycles = state.get("cycles", 0)
        self.reference = None if ref is None else ref.to(torch.float64).clone()
        self.cycles = check_int(cycles, "state['cycles']", 0)

    def save(self, path) -> None:
        """Write the state atomically (a ``.pt`` of tensors and ints only)."""
        state = self.state_dict()
        atomic_write(Path(path), lambda p: torch.save(state, p))

    def load(self, path) -> None:
        """Read a state written by :meth:`save` (``weights_only=True``: no object is unpickled).

        Only a regular ``.pt`` file of sane size is opened; anything else is a ``ValueError``.
        """
        state = read_data(path, (".pt",))
        if not isinstance(state, dict) or set(state) != {"reference", "cycles"}:
            raise ValueError(f"{path}: not a Balancer state (a dict of 'reference' and 'cycles')")
        try:
            self.load_state_dict(state)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: {exc}") from None
