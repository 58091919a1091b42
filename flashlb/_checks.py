"""Argument checks shared by every public entry point.

Each check raises one ``ValueError`` (or ``TypeError`` for a non-tensor) that names the
argument and the rule it broke, before anything is computed or written.
"""

from __future__ import annotations

import numbers

import torch

__all__ = [
    "as_hotness",
    "check_int",
    "check_sizes",
    "check_groups",
]


def check_int(value, name: str, minimum: int = 1) -> int:
    """``value`` as a Python int >= ``minimum``; bools and floats are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
            value = int(value.item())
        else:
            raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


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
        hotness = torch.from_numpy(hotness)
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
