"""Argument checks shared by every public entry point.

Each check raises one ``ValueError`` (or ``TypeError`` for a non-tensor) that names the
argument and the rule it broke, before anything is computed or written.
"""

from __future__ import annotations

import numbers
import os

import torch

__all__ = [
    "as_hotness",
    "check_int",
    "check_number",
    "check_seed",
    "check_sizes",
    "check_groups",
    "check_memory",
    "check_tensor",
    "scaled_to_max",
    "MAX_SECONDS",
    "MAX_SLOTS",
]

# The most slots per layer: the largest deployments use a few hundred; the search's time grows
# about as P**1.7 (one layer of 16384 slots takes seconds), so far beyond this it would not end.
MAX_SLOTS = 1 << 16

# The longest time budget accepted: a day. Beyond that a deadline is a typo (or inf), and
# waiting for it would freeze the caller.
MAX_SECONDS = 86400.0


def check_int(value, name: str, minimum: int = 1) -> int:
    """``value`` as a Python int >= ``minimum``; bools and floats are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if (isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point()
                and not value.is_meta and value.layout == torch.strided and value.dtype != torch.bool and not value.is_complex()):
            value = int(value.item())
        else:
            raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_number(value, name: str, *, minimum: float = 0.0, maximum: float = float("inf"),
                 positive: bool = False) -> float:
    """``value`` as a finite float in [minimum, maximum] (> minimum when ``positive``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        v = float(value)
    except (OverflowError, ValueError):
        raise ValueError(f"{name} must be a finite number, got {value!r}") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if v < minimum or (positive and v <= minimum) or v > maximum:
        lo = f"> {minimum:g}" if positive else f">= {minimum:g}"
        hi = f" and <= {maximum:g}" if maximum != float("inf") else ""
        raise ValueError(f"{name} must be {lo}{hi}, got {value!r}")
    return v


def check_budget(value, name: str) -> int | None:
    """A move budget: None (no cap) or an integer >= 0; NaN, floats and bools refused (a budget
    counts slots)."""
    if value is None:
        return None
    if isinstance(value, float):
        raise ValueError(f"{name} must be an integer >= 0 or None, got {value!r}")
    return check_int(value, name, 0)


def check_seed(seed, name: str = "seed") -> int:
    """An int in [0, 2**63): the C++ search takes a signed 64-bit seed."""
    s = check_int(seed, name, 0)
    if s >= 2**63:
        raise ValueError(f"{name} must be < 2**63, got {s}")
    return s


def check_tensor(t, name: str) -> torch.Tensor:
    """A dense tensor with data: sparse, quantized or meta tensors are refused."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.layout != torch.strided:
        raise ValueError(f"{name} must be a dense (strided) tensor, got layout {t.layout}")
    if t.is_meta:
        raise ValueError(f"{name} is a meta tensor: it has a shape but no data")
    if t.is_quantized:
        raise ValueError(f"{name} must not be quantized")
    return t


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not a POSIX system
        return 16 << 30


def check_memory(nbytes: int, what: str) -> None:
    """Refuse work whose arrays would not fit in this machine's memory (before allocating
    them, so absurd sizes fail at once instead of swapping or looping for hours)."""
    total = _physical_memory()
    if nbytes > total // 2:
        raise ValueError(
            f"{what} needs about {nbytes / 2**30:.3g} GiB, more than this machine can hold "
            f"({total / 2**30:.3g} GiB of memory)")


def scaled_to_max(h: torch.Tensor) -> torch.Tensor:
    """h: [T, L, N] float64 >= 0 divided by each layer's largest entry (layers without load
    stay 0). Plans and ratios do not change with a layer's scale, and sums of entries <= 1
    neither overflow (loads near 1e308) nor underflow to zero (subnormal loads)."""
    m = h.amax(dim=(0, 2), keepdim=True)
    return h / torch.where(m > 0, m, torch.ones_like(m))


def as_hotness(hotness, name: str = "hotness") -> torch.Tensor:
    """Validate loads and return them as float64 ``[T, L, N]`` on their own device.

    hotness: ``[L, N]`` (one window) or ``[T, L, N]`` (T episodes), any real or integer
    dtype; every entry finite and >= 0.
    """
    if not isinstance(hotness, torch.Tensor):
        import numpy as np

        if not isinstance(hotness, np.ndarray):
            raise TypeError(
                f"{name} must be a torch.Tensor of shape [L, N] or [T, L, N], "
                f"got {type(hotness).__name__}")
        try:
            hotness = torch.from_numpy(hotness)
        except TypeError as exc:
            raise ValueError(f"{name} must hold real or integer loads ({exc})") from None
    check_tensor(hotness, name)
    if hotness.dtype == torch.bool or hotness.is_complex():
        raise ValueError(f"{name} must hold real or integer loads, got dtype {hotness.dtype}")
    if hotness.dim() not in (2, 3):
        raise ValueError(
            f"{name} must be [L, N] or [T, L, N], got shape {tuple(hotness.shape)}"
        )
    if any(s == 0 for s in hotness.shape):
        raise ValueError(f"{name} must not be empty, got shape {tuple(hotness.shape)}")
    h = hotness.to(torch.float64)
    if not bool(torch.isfinite(h).all()):
        raise ValueError(f"{name} must be finite (found NaN or inf)")
    if bool((h < 0).any()):
        raise ValueError(f"{name} must be >= 0 (found a negative load)")
    if h.dim() == 2:
        h = h.unsqueeze(0)
    return h


def check_sizes(num_experts: int, num_physical, num_devices, *, physical_name="num_physical",
                devices_name="num_devices") -> tuple[int, int]:
    """Check that ``num_physical`` slots on ``num_devices`` devices can host ``num_experts``.

    Rules: P >= N (every expert needs a slot), P % D == 0 (every device has the same number
    of slots), P <= N * D (no expert twice on one device; equivalently P / D <= N).
    """
    P = check_int(num_physical, physical_name)
    D = check_int(num_devices, devices_name)
    if P < num_experts:
        raise ValueError(
            f"{physical_name}={P} is smaller than the number of experts N={num_experts}: "
            "every expert needs at least one slot"
        )
    if P % D != 0:
        raise ValueError(f"{physical_name}={P} must be a multiple of {devices_name}={D}")
    if P > num_experts * D:
        raise ValueError(
            f"{physical_name}={P} needs more than {D} replicas of some expert, so one device "
            f"would hold an expert twice: at most N * {devices_name} = {num_experts * D} slots"
        )
    if P > MAX_SLOTS:
        raise ValueError(f"{physical_name}={P}: at most {MAX_SLOTS} slots per layer are supported")
    # Every plan holds [P] slot ids and, per device, a flag per expert: bound both by memory.
    check_memory(8 * P + D * num_experts, f"{physical_name}={P} on {devices_name}={D}")
    return P, D


def check_groups(num_experts: int, num_devices: int, num_groups, num_nodes) -> tuple[int, int]:
    """Check expert groups and nodes: groups divide N, nodes divide D."""
    G = check_int(num_groups, "num_groups")
    M = check_int(num_nodes, "num_nodes")
    if num_experts % G != 0:
        raise ValueError(f"num_groups={G} must divide the number of experts N={num_experts}")
    if num_devices % M != 0:
        raise ValueError(f"num_nodes={M} must divide the number of devices {num_devices}")
    return G, M
