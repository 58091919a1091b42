"""Reading expert-load statistics from files. Files are data: nothing is ever unpickled."""

from __future__ import annotations

import json
from pathlib import Path

import torch

__all__ = ["load_hotness", "HOTNESS_KEYS"]

# Keys under which a file may hold its loads: SGLang's dumps and flashlb's own.
HOTNESS_KEYS = ("logical_count", "hotness", "expert_load", "weight")


def _pick(data, path: Path) -> torch.Tensor:
    if isinstance(data, dict):
        for key in HOTNESS_KEYS:
            if key in data:
                return _pick(data[key], path)
        tensors = [v for v in data.values() if isinstance(v, torch.Tensor)]
        if len(tensors) == 1:
            return tensors[0]
        raise ValueError(f"{path}: no loads found; expected one of the keys {list(HOTNESS_KEYS)}")
    if isinstance(data, torch.Tensor):
        return data
    try:
        return torch.tensor(data, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{path}: the loads are not a rectangular array of numbers") from exc


def load_hotness(path) -> torch.Tensor:
    """Loads from ``.json``, ``.pt``, ``.npy`` or ``.safetensors``: ``[L, N]`` or ``[T, L, N]``.

    JSON: SGLang's ``{"logical_count": ...}`` (the form in its published statistics) or a bare
    nested list. ``.pt``: a tensor or a dict (SGLang's expert-distribution dump, key
    ``logical_count``), read with ``weights_only=True``. Layers whose loads are all zero (dense
    layers in a recording of a whole model) are kept; the caller may drop them.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            data = json.loads(path.read_text())
        elif suffix == ".pt":
            data = torch.load(path, map_location="cpu", weights_only=True)
        elif suffix == ".npy":
            import numpy as np

            data = torch.from_numpy(np.load(path, allow_pickle=False))
        elif suffix == ".safetensors":
            from safetensors.torch import load_file

            data = load_file(str(path))
        else:
            raise ValueError(f"{path}: unknown format {suffix!r}; use .json, .pt, .npy or .safetensors")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    except ValueError:
        raise
    except Exception as exc:  # unpickling refused, truncated file, wrong magic number...
        raise ValueError(f"{path}: cannot read it as {suffix} ({type(exc).__name__}: {exc})") from exc
    t = _pick(data, path)
    if t.dim() not in (2, 3):
        raise ValueError(f"{path}: loads must be [L, N] or [T, L, N], got shape {tuple(t.shape)}")
    return t
