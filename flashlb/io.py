"""Reading expert-load statistics from files. Files are data: nothing is ever unpickled."""

from __future__ import annotations

import torch

from ._files import read_data

__all__ = ["load_hotness", "HOTNESS_KEYS"]

# Keys under which a file may hold its loads: SGLang's dumps and flashlb's own.
HOTNESS_KEYS = ("logical_count", "hotness", "expert_load", "weight")


def _numbers(data, path) -> torch.Tensor:
    """A nested list of numbers (JSON) as float64; 400-digit integers overflow to inf and are
    refused later, with every other non-finite load."""
    try:
        return torch.tensor(data, dtype=torch.float64)
    except OverflowError:
        raise ValueError(f"{path}: a load is too large for a float64") from None
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{path}: the loads are not a rectangular array of numbers") from None


def _pick(data, path) -> torch.Tensor:
    for _ in range(4):  # a dict may hold the loads one level down (SGLang's dump)
        if not isinstance(data, dict):
            break
        key = next((k for k in HOTNESS_KEYS if k in data), None)
        if key is None:
            tensors = [v for v in data.values() if isinstance(v, torch.Tensor)]
            if len(tensors) != 1:
                raise ValueError(f"{path}: no loads found; expected one of the keys {list(HOTNESS_KEYS)}")
            data = tensors[0]
        else:
            data = data[key]
    if isinstance(data, torch.Tensor):
        return data
    if isinstance(data, (dict, str, bytes)) or data is None:
        raise ValueError(f"{path}: no loads found; expected one of the keys {list(HOTNESS_KEYS)}")
    return _numbers(data, path)


def load_hotness(path) -> torch.Tensor:
    """Loads from ``.json``, ``.pt``, ``.npy`` or ``.safetensors``: ``[L, N]`` or ``[T, L, N]``.

    JSON: SGLang's ``{"logical_count": ...}`` (the form in its published statistics) or a bare
    nested list. ``.pt``: a tensor or a dict (SGLang's expert-distribution dump, key
    ``logical_count``), read with ``weights_only=True``. Layers whose loads are all zero (dense
    layers in a recording of a whole model) are kept; the caller may drop them. Only regular
    files of sane size are opened; anything missing, special or damaged is a ``ValueError``.
    """
    t = _pick(read_data(path), path)
    if t.layout != torch.strided or t.is_meta:
        raise ValueError(f"{path}: the loads must be a dense tensor with data, got layout {t.layout}"
                         f"{' on meta' if t.is_meta else ''}")
    if t.dim() not in (2, 3):
        raise ValueError(f"{path}: loads must be [L, N] or [T, L, N], got shape {tuple(t.shape)}")
    return t
