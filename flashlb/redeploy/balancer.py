"""Balancer: the stateful object a serving engine holds between decision cycles.

Layer-wise cherry-picking: each cycle measures every layer's per-episode peak/avg under the
placement in service and re-plans the layers that crossed a threshold - an absolute ratio,
or a relative degradation from what the layer showed in the first window after its last
placement (measured on the same kind of window, so the comparison is fair). Each re-planned
layer keeps its placement, takes a fresh plan aligned to it, or a point between them,
whichever costs least in peak/avg + ``move_penalty`` x moves (``refresh_penalty`` x moves
for the fresh plan: a whole re-plan's gain over the points near the placement in service is
not fitted noise, and it lasts; :func:`flashlb.plan` with ``previous``); a move budget per
cycle goes to the layers where a move gains most. By default both prices follow the shape of
the cluster (:func:`default_prices`).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import metrics
from .._checks import MAX_SLOTS, as_hotness, check_budget, check_int, check_number, check_sizes
from .._files import atomic_write, read_data, torch_bytes
from ..api import check_plan_options, check_previous, forecast_options, plan
from ..placement import Placement

__all__ = ["Balancer", "Update", "default_prices", "MOVE_PENALTY", "REFRESH_PENALTY"]

# The prices per moved slot measured at DeepSeek-V3's shape, 288 slots (256 experts) on
# 32 devices: README, "Redeployment".
MOVE_PENALTY = 1.2e-3
REFRESH_PENALTY = 4.7e-4


def default_prices(num_physical: int, num_devices: int) -> tuple[float, float]:
    """``(move_penalty, refresh_penalty)`` for ``num_physical`` slots on ``num_devices``
    devices: :data:`MOVE_PENALTY` and :data:`REFRESH_PENALTY` times ``(D / 32) * (288 / P)^2``
    (integers, 1 <= D <= P <= 65536, the most slots of a layer).

    A moved slot shifts one replica's load, on average ``1 / P`` of the layer's, which is
    ``D / P`` of a device's: what a move can gain in peak/avg grows with the device count and
    falls with the slot count. The square on P is fitted. Across 8-72 devices and 16-256
    experts on up to two slots per expert, this keeps the Balancer within ~1% of fresh plans
    (~2% with 32 or fewer experts) at ~20% of the aligned default's moves, where one pair of
    prices for every shape re-planned too little on few devices and far too much on many
    devices or with fewer experts (README, "Redeployment").
    """
    P = check_int(num_physical, "num_physical")
    D = check_int(num_devices, "num_devices")
    if P > MAX_SLOTS:
        raise ValueError(f"num_physical must be <= {MAX_SLOTS} (the most slots of a layer), got {P}")
    if D > P:
        raise ValueError(f"num_devices={D} must be <= num_physical={P} (every device holds a slot)")
    scale = (D / 32) * (288 / P) ** 2  # at most 2592 (P = D = 1): prices <= 3.2
    return MOVE_PENALTY * scale, REFRESH_PENALTY * scale


def _price(value, name: str, none_ok: bool = False):
    """A price argument: "auto" (by the shape, :meth:`Balancer.prices`), a number in [0, 1e6]
    (as :func:`flashlb.plan` takes it), or (where ``none_ok``) None."""
    if value is None and none_ok:
        return None
    if isinstance(value, str):
        if value == "auto":
            return "auto"  # a plain str, also for numpy's str_
    else:
        try:
            return check_number(value, name, maximum=1e6)
        except ValueError:
            pass
    accepted = "'auto', None or a number" if none_ok else "'auto' or a number"
    raise ValueError(f"{name} must be {accepted} in [0, 1e6], got {value!r}")


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

    num_physical / num_devices: P slots on D devices. move_penalty: cost of one moved slot in
    peak/avg units (see :func:`flashlb.plan`); "auto": :func:`default_prices` of P and D.
    refresh_penalty: the cost of one moved slot when a layer takes its fresh plan whole;
    "auto": the defaults' ratio to the move price in use (4.7e-4 / 1.2e-3 of it), so with
    "auto" for both the pair of :func:`default_prices`; None: ``move_penalty``. layer_penalty: the
    fixed price of re-placing a layer at all, paid once per layer that moves.
    max_moves_per_cycle / max_bytes_per_cycle: at most this many slots, or weight bytes (needs
    ``expert_bytes``), changed per cycle in all, spent where the gain per move is largest across
    layers (None: no cap); a layer in service that holds an expert twice on one device is
    repaired outside the cap (see :func:`flashlb.plan`). threshold: re-plan a layer whose
    per-episode peak/avg exceeds it. degradation: or whose ratio grew by this fraction over
    its reference (the first window after its last placement).
    min_gain: keep a re-placed layer only if it lowers the window's ratio by at least this
    (0: keep whatever the plan chose; it has priced every move already).
    max_layers_per_cycle: cap per cycle (None: no cap), most gain first. expert_bytes:
    weight bytes of one expert, to report transfers. forecast: plan on the forecast of the
    next window (:mod:`flashlb.forecast`; a dict of its options, or False for the window's
    episodes as they are). Other keyword options go to :func:`flashlb.plan`.

    The defaults (``forecast=True``; on 288 slots / 32 devices ``move_penalty=1.2e-3``,
    ``refresh_penalty=4.7e-4``, scaled by the shape elsewhere) were
    chosen by measurement on synthetic traces (README, "Redeployment"): small repairs are dear,
    so noise fitted in the window buys few moves, while a layer whose fresh plan beats every
    point near the one in service by ~0.1 peak/avg is re-planned whole. On held-out hot/cold
    swaps the next window is about as balanced as with fresh plans every cycle, at a fifth of
    their moves (with ``move_penalty=6e-4`` alone: 1.1-1.8% worse).

    State (saved by :meth:`save`): ``reference`` [L] ratio in the first window after each
    layer's last placement, valid where ``measured`` [L] is true; ``cycles``.
    """

    def __init__(self, num_physical: int, num_devices: int, *, move_penalty: float | str = "auto",
                 refresh_penalty: float | str | None = "auto", layer_penalty: float = 0.0,
                 forecast: bool | dict = True,
                 max_moves_per_cycle: int | None = None, max_bytes_per_cycle: int | None = None,
                 threshold: float = 1.0, degradation: float = 0.0, min_gain: float = 0.0,
                 max_layers_per_cycle: int | None = None, expert_bytes: int | None = None,
                 **plan_options):
        self.num_physical = check_int(num_physical, "num_physical")
        self.num_devices = check_int(num_devices, "num_devices")
        for name, v in (("threshold", threshold), ("degradation", degradation), ("min_gain", min_gain)):
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or v != v or v < 0:
                raise ValueError(f"{name} must be a number >= 0, got {v!r}")
        if threshold < 1:
            raise ValueError(f"threshold must be >= 1 (a peak/avg ratio), got {threshold}")
        self.threshold = float(threshold)
        self.degradation = float(degradation)
        self.min_gain = float(min_gain)
        self.move_penalty = _price(move_penalty, "move_penalty")
        self.layer_penalty = check_number(layer_penalty, "layer_penalty", maximum=1e6)
        self.refresh_penalty = _price(refresh_penalty, "refresh_penalty", none_ok=True)
        self.prices()  # the shape's prices exist (num_physical, num_devices checked) before any cycle
        self.max_layers = None if max_layers_per_cycle is None else check_int(max_layers_per_cycle, "max_layers_per_cycle")
        self.max_moves = check_budget(max_moves_per_cycle, "max_moves_per_cycle")
        self.max_bytes = check_budget(max_bytes_per_cycle, "max_bytes_per_cycle")
        self.expert_bytes = None if expert_bytes is None else check_int(expert_bytes, "expert_bytes", 0)
        if self.max_bytes is not None and not self.expert_bytes:
            raise ValueError("max_bytes_per_cycle needs expert_bytes (the weight bytes of one expert) > 0")
        for key in ("previous", "max_moves", "algorithm"):
            if key in plan_options:
                raise ValueError(f"Balancer sets {key!r} itself; it is not a plan option here")
        # The checks plan runs, here before the first cycle.
        check_plan_options(plan_options, "Balancer")
        forecast_options(forecast)
        self.plan_options = dict(plan_options, forecast=forecast)
        self.reference: torch.Tensor | None = None  # [L] ratio after the last placement
        self.measured: torch.Tensor | None = None   # [L] bool: reference holds a measurement
        self.cycles = 0

    @property
    def moves_budget(self) -> int | None:
        """Slots that one cycle may change: the smaller of the two budgets (None: no cap)."""
        caps = [c for c in (self.max_moves,
                            None if self.max_bytes is None else self.max_bytes // self.expert_bytes)
                if c is not None]
        return min(caps) if caps else None

    def prices(self) -> tuple[float, float | None]:
        """``(move_penalty, refresh_penalty)`` as the Balancer uses them: the numbers given,
        or where "auto" the shape's (:func:`default_prices`), the refresh price following a
        move price given as a number; refresh None where given None (a whole re-plan's move
        then costs ``move_penalty``)."""
        if self.move_penalty == "auto":
            move, refresh = default_prices(self.num_physical, self.num_devices)
        else:
            move = self.move_penalty
            refresh = move * (REFRESH_PENALTY / MOVE_PENALTY)
        return move, (refresh if self.refresh_penalty == "auto" else self.refresh_penalty)

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
            self.reference = torch.zeros(L, dtype=torch.float64)
            self.measured = torch.zeros(L, dtype=torch.bool)
        # The first window after a placement sets the layer's reference.
        self.reference = torch.where(self.measured, self.reference, before)
        self.measured = torch.ones(L, dtype=torch.bool)
        trigger = (before > self.threshold) | (before > self.reference * (1 + self.degradation))
        layers = trigger.nonzero().flatten()
        after = before.clone()
        new = current
        chosen = layers[:0]
        budget = self.moves_budget
        if layers.numel() and budget != 0:
            move_penalty, refresh_penalty = self.prices()
            cand = plan(h[:, layers], self.num_physical, self.num_devices,
                        previous=current.select_layers(layers), move_penalty=move_penalty,
                        layer_penalty=self.layer_penalty, refresh_penalty=refresh_penalty,
                        max_moves=budget, **self.plan_options)
            ratio = metrics.balance_ratio(cand, h[:, layers])
            gain = before[layers] - ratio
            moved = metrics.moves(current.select_layers(layers), cand) > 0
            # min_gain=0: the plan has already weighed each move against its gain, on its own
            # objective (recency weights, forecast scenarios), which the plain window ratio
            # would second-guess.
            keep = moved & (gain >= self.min_gain) if self.min_gain > 0 else moved
            order = gain[keep].argsort(descending=True, stable=True)
            if self.max_layers is not None:
                order = order[: self.max_layers]
            picked = keep.nonzero().flatten()[order]  # rows of cand, most gain first
            chosen = layers[picked]
            if chosen.numel():
                new = current.replace_layers(chosen, cand.select_layers(picked))
                after[chosen] = ratio[picked]
                self.measured[chosen] = False
        self.cycles += 1
        moves = metrics.moves(current, new)
        nbytes = None if self.expert_bytes is None else int(moves.sum()) * self.expert_bytes
        return Update(new, chosen, moves, before, after, nbytes)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Everything needed to resume: per-layer references, which are measured, cycles."""
        return {"reference": None if self.reference is None else self.reference.clone(),
                "measured": None if self.measured is None else self.measured.clone(),
                "cycles": self.cycles}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s output; checked in full before anything changes."""
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict, got {type(state).__name__}")
        ref, measured = state.get("reference"), state.get("measured")
        if (ref is None) != (measured is None):
            raise ValueError("state['reference'] and state['measured'] must both be given or both None")
        if ref is not None:
            if not isinstance(ref, torch.Tensor) or ref.dim() != 1 or ref.is_meta \
                    or ref.layout != torch.strided or not ref.is_floating_point() \
                    or not bool(torch.isfinite(ref).all()) or bool((ref < 0).any()):
                raise ValueError("state['reference'] must be a dense [L] tensor of finite ratios >= 0 or None")
            if not isinstance(measured, torch.Tensor) or measured.dtype != torch.bool or measured.is_meta \
                    or measured.layout != torch.strided or measured.shape != ref.shape:
                raise ValueError("state['measured'] must be a [L] bool tensor like state['reference']")
        cycles = check_int(state.get("cycles", 0), "state['cycles']", 0)
        # Plain CPU data, as step() keeps it (no autograd history, no other device).
        self.reference = None if ref is None else ref.detach().to("cpu", torch.float64).clone()
        self.measured = None if measured is None else measured.detach().cpu().clone()
        self.cycles = cycles

    def save(self, path) -> None:
        """Write the state atomically (a ``.pt`` of tensors and ints only)."""
        state = self.state_dict()
        atomic_write(Path(path), torch_bytes(state))

    def load(self, path) -> None:
        """Read a state written by :meth:`save` (``weights_only=True``: no object is unpickled).

        Only a regular ``.pt`` file of sane size is opened; anything else is a ``ValueError``.
        """
        state = read_data(path, (".pt",))
        if not isinstance(state, dict) or set(state) != {"reference", "measured", "cycles"}:
            raise ValueError(f"{path}: not a Balancer state (a dict of 'reference', 'measured' "
                             f"and 'cycles')")
        try:
            self.load_state_dict(state)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: {exc}") from None
