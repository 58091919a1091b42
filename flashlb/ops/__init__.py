"""flashlb's custom operators, ``torch.ops.flashlb.*``.

- ``accumulate_hotness(hotness [L, N], topk_ids [tokens, k], layer)``: in place, one count per
  routed token at ``hotness[layer, id]``; negative ids are padding and are skipped.
- ``episode_stats(steps [S, L, N], episode_len) -> (episodes [ceil(S/E), L, N], mean [L, N], var [L, N])``.
- ``joint_search(...)``: the C++ core of the FlashLB solver (wrapped by flashlb.solvers.search).

Back ends, one behaviour: C++ kernels on the CPU (host/ops), Ascend C kernels on the NPU
(kernels/, registered under PrivateUse1 where built with CANN), and the plain-torch versions
below for every other device (CUDA, or an NPU without the built kernels). Fake implementations
let ``torch.compile`` trace the ops.

Checks: shapes, dtypes, devices and ``layer`` are checked everywhere, on the host, for free.
Ids >= N are refused on the CPU always (``ValueError``, before any write). On accelerators
that check needs a host synchronisation, so it runs only with ``set_debug_checks(True)`` (or
FLASHLB_DEBUG_CHECKS=1), whose setting ``accumulate_hotness`` passes to the operator as
``check_ids``; without it every accelerator path (NPU kernel, plain torch) drops such ids like
padding. Integer counts saturate at their dtype's largest value instead of wrapping (int32
hotness at 2**31 - 1), on every path.
"""

from __future__ import annotations

import os

import torch

try:
    from .. import _C  # noqa: F401  (registers torch.ops.flashlb.*)
except ImportError as exc:  # pragma: no cover - only on a broken install
    raise ImportError(
        "flashlb's C++ extension (flashlb._C) is not built: run `bash build.sh` or "
        "`pip install --no-build-isolation -e .` in the flashlb checkout"
    ) from exc

NPU_LIBRARY = "libflashlb_npu.so"  # built by kernels/build_npu.sh into the package folder


def _load_npu_kernels() -> bool:
    """Register the Ascend C kernels (PrivateUse1) when they were built and torch_npu imports.

    The library lives in the package folder (``flashlb/``), installed with the package.
    """
    import importlib.util
    import warnings
    from pathlib import Path

    if importlib.util.find_spec("torch_npu") is None:
        return False
    lib = Path(__file__).resolve().parent.parent / NPU_LIBRARY
    if not lib.is_file():
        warnings.warn(f"torch_npu is installed but {lib} is not: flashlb's hotness operators use plain "
                      "torch on the NPU (build the Ascend C kernels with kernels/build_npu.sh)", stacklevel=2)
        return False
    import torch_npu  # noqa: F401  (the "npu" device must exist before the kernels load)

    torch.ops.load_library(str(lib))
    return True


NPU_KERNELS = _load_npu_kernels()

__all__ = ["NPU_KERNELS", "accumulate_hotness", "episode_stats", "episode_covariance", "joint_search",
           "set_debug_checks"]

_debug = os.environ.get("FLASHLB_DEBUG_CHECKS", "") not in ("", "0")


def set_debug_checks(enabled: bool) -> None:
    """Check ids < N on accelerators too (costs a host synchronisation per call)."""
    global _debug
    _debug = bool(enabled)


_COUNT_DTYPES = (torch.int32, torch.int64, torch.float32)
_ID_DTYPES = (torch.int32, torch.int64)
_STEP_DTYPES = (torch.int32, torch.int64, torch.float32, torch.float64)


def _check_accumulate(hotness: torch.Tensor, topk_ids: torch.Tensor, layer: int) -> None:
    if hotness.dim() != 2:
        raise ValueError(f"accumulate_hotness: hotness must be [L, N], got {tuple(hotness.shape)}")
    if topk_ids.dim() not in (1, 2):
        raise ValueError(f"accumulate_hotness: topk_ids must be [tokens, k], got {tuple(topk_ids.shape)}")
    if hotness.device != topk_ids.device:
        raise ValueError(f"accumulate_hotness: hotness is on {hotness.device} but topk_ids on {topk_ids.device}")
    if hotness.dtype not in _COUNT_DTYPES:
        raise ValueError(f"accumulate_hotness: hotness must be int32, int64 or float32, got {hotness.dtype}")
    if topk_ids.dtype not in _ID_DTYPES:
        raise ValueError(f"accumulate_hotness: topk_ids must be int32 or int64, got {topk_ids.dtype}")
    if not hotness.is_contiguous():
        raise ValueError("accumulate_hotness: hotness must be contiguous")
    if not 0 <= layer < hotness.shape[0]:
        raise IndexError(f"accumulate_hotness: layer {layer} is outside [0, {hotness.shape[0]})")


def _accumulate_torch(hotness: torch.Tensor, topk_ids: torch.Tensor, layer: int, check_ids: bool = False) -> None:
    _check_accumulate(hotness, topk_ids, layer)
    N = hotness.shape[1]
    ids = topk_ids.reshape(-1).to(torch.int64)
    if check_ids and ids.numel() and int(ids.max()) >= N:  # a host synchronisation
        raise ValueError(f"accumulate_hotness: topk_ids holds id {int(ids.max())}, not below the "
                         f"number of experts {N}")
    if N == 0:  # no experts: every id is padding (or dropped), and there is no column 0
        return
    # Padding and ids >= N add zero at column 0: no mask, no dynamic shape, no sync.
    valid = (ids >= 0) & (ids < N)
    index = torch.where(valid, ids, 0)
    row = hotness[layer]
    # Each expert's count of this call first, added once, as the C++ kernels do: float counts
    # round once per call (not once per id), integer counts saturate at the dtype's largest value.
    add = torch.zeros(N, dtype=torch.int64, device=hotness.device).scatter_add_(0, index, valid.to(torch.int64))
    if hotness.dtype.is_floating_point:
        row.add_(add.to(hotness.dtype))
        return
    top = torch.iinfo(hotness.dtype).max
    wide = row.to(torch.int64)
    # The headroom top - wide overflows int64 where a count is negative; such counts take any add.
    row.copy_(wide + torch.minimum(add, top - wide.clamp(min=0)))


def _episode_dtypes(steps: torch.Tensor, episode_len: int):
    """(episodes T, dtype of the episode sums, dtype of mean / var) of episode_stats."""
    T = -(-steps.shape[0] // episode_len)
    sums = steps.dtype if steps.dtype.is_floating_point else torch.int64
    stat = torch.float64 if steps.dtype == torch.float64 else torch.float32
    return T, sums, stat


def _check_episode(steps: torch.Tensor, episode_len: int) -> None:
    if steps.dim() != 3:
        raise ValueError(f"episode_stats: steps must be [S, L, N], got {tuple(steps.shape)}")
    if episode_len < 1:
        raise ValueError(f"episode_stats: episode_len must be >= 1, got {episode_len}")
    if steps.shape[0] < 1:
        raise ValueError("episode_stats: steps must hold at least one step")
    if steps.dtype not in _STEP_DTYPES:
        raise ValueError(f"episode_stats: steps must be int32, int64, float32 or float64, got {steps.dtype}")


def _episode_stats_torch(steps: torch.Tensor, episode_len: int):
    _check_episode(steps, episode_len)
    S, L, N = steps.shape
    T, sums, stat = _episode_dtypes(steps, episode_len)
    first = S - (T - 1) * episode_len
    acc = steps.to(sums)
    if T == 1:  # also when episode_len > S: no padding of episode_len - S rows
        episodes = acc.sum(0, keepdim=True)
    else:  # the oldest episode takes the leftover steps: pad it in front with zeros
        pad = acc.new_zeros(T * episode_len - S, L, N)
        episodes = torch.cat([pad, acc]).view(T, episode_len, L, N).sum(1)
    scale = torch.ones(T, 1, 1, dtype=torch.float64, device=steps.device)
    scale[0] = episode_len / first
    full = episodes.to(torch.float64) * scale
    mean = full.mean(0)
    var = (full - mean).square().mean(0)
    return episodes, mean.to(stat), var.to(stat)


def _register() -> None:
    lib = torch.library.Library("flashlb", "IMPL")  # noqa: F841 - kept alive below
    # Plain torch for every device without a dedicated kernel (CPU and, when built, the NPU
    # have their own; those take precedence over this composite one).
    torch.library.impl("flashlb::accumulate_hotness", "CompositeExplicitAutograd", lib=lib)(_accumulate_torch)
    torch.library.impl("flashlb::episode_stats", "CompositeExplicitAutograd", lib=lib)(_episode_stats_torch)

    @torch.library.register_fake("flashlb::accumulate_hotness", lib=lib)
    def _(hotness, topk_ids, layer, check_ids=False):
        _check_accumulate(hotness, topk_ids, layer)
        return None

    # The fakes check shapes, sizes and dtypes as the kernels do (meta tensors and
    # torch.compile see the same errors); checks on values need data and stay in the kernels.
    @torch.library.register_fake("flashlb::episode_stats", lib=lib)
    def _(steps, episode_len):
        _check_episode(steps, episode_len)
        S, L, N = steps.shape
        T, sums, stat = _episode_dtypes(steps, episode_len)
        return (steps.new_empty(T, L, N, dtype=sums),
                steps.new_empty(L, N, dtype=stat), steps.new_empty(L, N, dtype=stat))

    # The solver's ops run on the CPU between decisions; fakes give them shapes for tracing.
    @torch.library.register_fake("flashlb::joint_search", lib=lib)
    def _(loads, episode_weights, *, counts=None, init_slots=None, anchor=None, num_devices,
          slots_per_device, smoothing=0.05, move_penalty=0.0, perturb_rounds=0, seed=0,
          time_limit=None):
        if loads.dim() != 3:
            raise ValueError("joint_search: loads must be [B, T, N]")
        if num_devices < 1 or slots_per_device < 1:
            raise ValueError("joint_search: num_devices and slots_per_device must be >= 1")
        B, _, N = loads.shape
        return (loads.new_empty(B, num_devices * slots_per_device, dtype=torch.int64),
                loads.new_empty(B, N, dtype=torch.int64), loads.new_empty(B, 3))

    @torch.library.register_fake("flashlb::max_assignment", lib=lib)
    def _(scores):
        if scores.dim() != 3 or scores.shape[1] != scores.shape[2]:
            raise ValueError(f"max_assignment: scores must be [B, n, n], got {tuple(scores.shape)}")
        return scores.new_empty(scores.shape[:2], dtype=torch.int64)

    @torch.library.register_fake("flashlb::balanced_packing", lib=lib)
    def _(weight, num_packs):
        if weight.dim() != 2 or weight.dtype != torch.float64:
            raise ValueError("balanced_packing: weight must be a [X, M] float64 tensor")
        if num_packs < 1 or weight.shape[1] % num_packs != 0:
            raise ValueError("balanced_packing: the items must fill num_packs packs evenly")
        return (weight.new_empty(weight.shape, dtype=torch.int64),
                weight.new_empty(weight.shape, dtype=torch.int64))

    _register.lib = lib


_register()


def accumulate_hotness(hotness: torch.Tensor, topk_ids: torch.Tensor, layer: int, *,
                       check_ids: bool | None = None) -> None:
    """Add one to ``hotness[layer, id]`` for every id of ``topk_ids [tokens, k]`` (in place).

    hotness: [L, N] int32/int64/float32, contiguous; topk_ids: int32/int64, negative = padding.
    Integer counts saturate at their dtype's largest value. ``check_ids`` (default: the
    ``set_debug_checks`` setting) refuses ids >= N on accelerators too; the CPU always does.
    """
    # Python types only (no tensor data is read here): the hot path stays free of syncs.
    for name, t in (("hotness", hotness), ("topk_ids", topk_ids)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"accumulate_hotness: {name} must be a torch.Tensor, got {type(t).__name__}")
    if isinstance(layer, (bool, float)):
        raise TypeError(f"accumulate_hotness: layer must be an int, got {layer!r}")
    torch.ops.flashlb.accumulate_hotness(hotness, topk_ids, layer, _debug if check_ids is None else bool(check_ids))


def episode_stats(steps: torch.Tensor, episode_len: int):
    """steps [S, L, N] -> (episodes [ceil(S/E), L, N], mean [L, N], var [L, N]).

    Episodes are sums of ``episode_len`` consecutive steps; when E does not divide S the
    oldest episode is the short one (no step is dropped). mean / var are over episodes of the
    sums scaled to E steps (population variance).
    """
    return torch.ops.flashlb.episode_stats(steps, episode_len)


def episode_covariance(episodes: torch.Tensor) -> torch.Tensor:
    """episodes [T, L, N] -> [L, N, N] covariance between experts over episodes.

    The solver works on the episodes themselves (its objective is the per-episode peak, which
    holds every correlation); this is for users who want the matrix itself.
    """
    x = episodes.to(torch.float64)
    x = x - x.mean(0, keepdim=True)
    return torch.einsum("tln,tlm->lnm", x, x) / x.shape[0]


joint_search = torch.ops.flashlb.joint_search
