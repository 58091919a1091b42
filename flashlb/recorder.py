"""HotnessRecorder: per-step expert counts kept in a ring buffer on the model's device."""

from __future__ import annotations

import torch

from ._checks import check_int
from .ops import accumulate_hotness, episode_stats

__all__ = ["HotnessRecorder"]


class HotnessRecorder:
    """Records how many tokens each expert of each layer receives, step by step.

    ``record(layer, topk_ids)`` inside the MoE forward counts one step's routing into the
    step row ``current [L, N]``; ``next_step()`` commits it into the ring ``buffer [W, L, N]``
    at a position kept *on the device*, so neither call synchronises with the host, allocates
    memory or depends on a Python value that a CUDA/NPU graph would freeze. The host only
    counts how many steps it committed (``steps``), which it knows without asking the device.
    """

    def __init__(self, num_layers: int, num_experts: int, window: int, *, device=None,
                 dtype: torch.dtype = torch.int32):
        L = check_int(num_layers, "num_layers")
        N = check_int(num_experts, "num_experts")
        W = check_int(window, "window")
        if dtype not in (torch.int32, torch.int64, torch.float32):
            raise ValueError(f"dtype must be int32, int64 or float32, got {dtype}")
        try:
            dev = torch.device(device) if device is not None else torch.device("cpu")
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"device: {device!r} is not a torch device ({exc})") from None
        if dev.type == "meta":  # shapes without data: nothing recorded could be read back
            raise ValueError("device: a recorder on the meta device would hold no counts")
        try:  # the first allocation is where torch finds out the device is missing
            self.buffer = torch.zeros(W, L, N, dtype=dtype, device=dev)
        except (AssertionError, RuntimeError) as exc:
            raise ValueError(
                f"device: cannot hold a [{W}, {L}, {N}] ring on {str(dev)!r} ({exc})") from None
        device = dev
        self.current = torch.zeros(L, N, dtype=dtype, device=device)
        self._pos = torch.zeros(1, dtype=torch.int64, device=device)  # next ring row
        self._ring = torch.arange(W, dtype=torch.int64, device=device)
        self.steps = 0

    @property
    def window_size(self) -> int:
        return self.buffer.shape[0]

    def record(self, layer: int, topk_ids: torch.Tensor) -> None:
        """Count ``topk_ids [tokens, k]`` (negative = padding) for ``layer`` in this step.

        Integer counts saturate at their dtype's largest value; ids >= N raise on the CPU
        and, under ``flashlb.ops.set_debug_checks(True)``, on accelerators too (else they are
        dropped there, see ``flashlb.ops``).
        """
        accumulate_hotness(self.current, topk_ids, layer)

    def next_step(self) -> None:
        """Commit the current step into the ring and start a new one (device-side only)."""
        self.buffer.index_copy_(0, self._pos, self.current.unsqueeze(0))
        self._pos.add_(1).remainder_(self.window_size)
        self.current.zero_()
        self.steps += 1

    def window(self) -> torch.Tensor:
        """The committed steps, oldest first: [min(steps, W), L, N] on the recorder's device."""
        n = min(self.steps, self.window_size)
        if n == 0:
            raise ValueError("the recorder holds no committed step yet: call next_step() first")
        order = (self._ring + self._pos).remainder_(self.window_size)
        return self.buffer.index_select(0, order[self.window_size - n:])

    def episodes(self, episode_len: int) -> torch.Tensor:
        """The window cut into episodes of ``episode_len`` steps: [ceil(n / E), L, N] sums."""
        E = check_int(episode_len, "episode_len")
        return episode_stats(self.window(), E)[0]

    def all_reduce(self, group=None) -> None:
        """Sum the ring over the ranks of ``group`` (hccl, nccl or gloo), in place.

        Every rank must have committed the same number of steps.
        """
        import torch.distributed as dist

        dist.all_reduce(self.buffer, op=dist.ReduceOp.SUM, group=group)

    def reset(self) -> None:
        self.buffer.zero_()
        self.current.zero_()
        self._pos.zero_()
        self.steps = 0
