"""vLLM: an EPLB policy and the plugin that registers it.

Contract (vLLM 0.33, ``vllm/distributed/eplb/policy/abstract.py``): the policy class's
``rebalance_experts(weight [L, N], num_replicas, num_groups, num_nodes, num_ranks,
old_global_expert_indices [L, P_old] | None)`` returns only ``physical_to_logical_map
[L, num_replicas]``, a CPU int64 tensor; vLLM derives log2phy and the counts itself
(``compute_logical_maps``) and pads them to its own width. The call is made on the class (a
classmethod); it works on an instance too, for the instance-based policies being introduced
on vLLM's main branch. Older vLLM releases, whose policies return ``(phy2log, log2phy,
logcnt)``, get :class:`FlashLBEplbPolicyTuple` from :func:`register`.

Turn it on with the ``vllm.general_plugins`` entry point (installed with flashlb; it adds the
name ``"flashlb"``, and with ``FLASHLB_VLLM_ASCEND=1`` also serves vllm-ascend's policy type 3:
:mod:`flashlb.integrations.vllm_ascend`) and
``--eplb-config '{"policy": "flashlb", "use_async": false}'``.
"""

from __future__ import annotations

import logging
import typing

import numpy as np
import torch

from ..api import plan
from ..placement import Placement

__all__ = ["FlashLBEplbPolicy", "FlashLBEplbPolicyTuple", "EplbInputError", "POLICY_NAME",
           "preserve_intragpu_slots", "register"]

POLICY_NAME = "flashlb"
logger = logging.getLogger(__name__)


class EplbInputError(ValueError, AssertionError):
    """Bad sizes. A ValueError, and an AssertionError because that is what vLLM's own
    policy raises for them (its callers and tests expect it)."""


def _base_class():
    """vLLM's ``AbstractEplbPolicy`` when vLLM is importable, else ``object``."""
    try:
        from vllm.distributed.eplb.policy.abstract import AbstractEplbPolicy
    except Exception:  # vLLM absent, or present without what its package import needs
        return object
    return AbstractEplbPolicy


def _previous(old: torch.Tensor | None, L: int, N: int, P: int, D: int) -> Placement | None:
    """The placement in service, or None where it cannot seed the search.

    Elastic EP hands over maps of another width (ranks added or removed) or with -1 in slots
    that hold no expert yet; such a map is no placement of the new shape, so the plan starts
    fresh (vLLM's own policy likewise only re-slots when the shape is unchanged). A map that
    is corrupt rather than elastic - not integer, ids outside [-1, N), another layer count, or
    a full map (no -1) that leaves an expert without a replica - is a ValueError.
    """
    if old is None:
        return None
    if not isinstance(old, torch.Tensor):
        raise TypeError(f"old_global_expert_indices must be a torch.Tensor, got {type(old).__name__}")
    old = old.detach().cpu()
    if old.dim() != 2 or old.shape[0] != L:
        raise EplbInputError(f"old_global_expert_indices must be [{L}, P_old], got {tuple(old.shape)}")
    if old.dtype.is_floating_point or old.dtype == torch.bool or old.is_complex():
        raise EplbInputError(f"old_global_expert_indices must hold integer expert ids, got {old.dtype}")
    old = old.to(torch.int64)
    if old.numel() and (int(old.min()) < -1 or int(old.max()) >= N):
        raise EplbInputError(f"old_global_expert_indices holds an id outside [-1, {N})")
    if tuple(old.shape) != (L, P) or bool((old < 0).any()):
        return None  # elastic EP: ranks added or removed
    p = Placement.from_phy2log(old, N, D)
    if bool((p.logcnt == 0).any()):
        layer, expert = (p.logcnt == 0).nonzero()[0].tolist()
        raise EplbInputError(f"old_global_expert_indices leaves expert {expert} of layer {layer} without a replica")
    return p


def _grouping(N: int, num_groups, num_nodes, D: int, P: int) -> tuple[int | None, int]:
    """vLLM's rule: hierarchical when groups divide among nodes, else global balancing."""
    G, M = num_groups, num_nodes
    if (not G or not M or G % M or N % G or D % M or P // D > N // M):
        return None, 1
    return G, M


def _check(weight, num_replicas, num_ranks) -> tuple[torch.Tensor, int, int]:
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor [L, N], got {type(weight).__name__}")
    if weight.dim() != 2:
        raise EplbInputError(f"weight must be [L, N], got shape {tuple(weight.shape)}")
    for name, v in (("num_replicas", num_replicas), ("num_ranks", num_ranks)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise EplbInputError(f"{name} must be a positive int, got {v!r}")
    if num_replicas % num_ranks:
        raise EplbInputError(f"num_replicas={num_replicas} must be a multiple of num_ranks={num_ranks}")
    if num_replicas < weight.shape[1]:
        raise EplbInputError(f"num_replicas={num_replicas} is fewer than the {weight.shape[1]} experts")
    return weight, int(num_replicas), int(num_ranks)


def _rebalance(options: dict, weight, num_replicas, num_groups, num_nodes, num_ranks,
               old_global_expert_indices) -> torch.Tensor:
    weight, P, D = _check(weight, num_replicas, num_ranks)
    L, N = weight.shape
    G, M = _grouping(N, num_groups, num_nodes, D, P)
    previous = _previous(old_global_expert_indices, L, N, P, D)
    placement = plan(weight.detach().cpu(), P, D, num_groups=G, num_nodes=M, previous=previous,
                     **options)
    return placement.phy2log.cpu().to(torch.int64).contiguous()


class FlashLBEplbPolicy(_base_class()):
    """vLLM's EPLB policy interface (an ``AbstractEplbPolicy`` where vLLM is importable).

    Stateless like vLLM's own policies: each call is a pure function of its arguments.
    """

    #: extra keyword options for :func:`flashlb.plan` (e.g. ``{"time_budget": 2.0}``)
    options: dict = {}

    def __init__(self, *args, **kwargs):
        # Instance-based policy APIs construct the policy with their config; nothing to keep.
        pass

    @classmethod
    def rebalance_experts(cls, weight: torch.Tensor, num_replicas: int, num_groups: int,
                          num_nodes: int, num_ranks: int,
                          old_global_expert_indices: torch.Tensor | None = None) -> torch.Tensor:
        """weight: [L, N] loads; old_global_expert_indices: [L, P_old] map in service (may
        hold -1 and have another width under elastic EP). Returns phy2log [L, num_replicas],
        CPU int64."""
        return _rebalance(cls.options, weight, num_replicas, num_groups, num_nodes, num_ranks,
                          old_global_expert_indices)

    @classmethod
    def preserve_intragpu_slots(cls, phy2log, num_ranks: int, old_phy2log):
        """Same contract as vLLM's helper of that name; see :func:`preserve_intragpu_slots`."""
        return preserve_intragpu_slots(phy2log, num_ranks, old_phy2log)


class FlashLBEplbPolicyTuple(FlashLBEplbPolicy):
    """For vLLM releases whose policies return ``(phy2log [L, P], log2phy [L, N, R] -1
    padded, logcnt [L, N])``."""

    @classmethod
    def rebalance_experts(cls, weight, num_replicas, num_groups, num_nodes, num_ranks,
                          old_global_expert_indices=None):
        phy = super().rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_ranks,
                                        old_global_expert_indices)
        return Placement.from_phy2log(phy, weight.shape[1], int(num_ranks)).as_tuple()


def preserve_intragpu_slots(phy2log, num_ranks: int, old_phy2log):
    """Reorder each rank's slots so experts that stay on a rank keep their old slot.

    phy2log, old_phy2log: [L, P] (numpy arrays or tensors, the result has phy2log's type).
    Per rank the multiset of experts is unchanged; an expert present on the rank before and
    after sits at (one of) its old slots; the others fill the free slots in order. Applied only
    when both maps have the same shape and P divides among num_ranks.
    """
    as_numpy = isinstance(phy2log, np.ndarray)
    new = np.asarray(phy2log.cpu() if isinstance(phy2log, torch.Tensor) else phy2log)
    old = np.asarray(old_phy2log.cpu() if isinstance(old_phy2log, torch.Tensor) else old_phy2log)
    if new.ndim != 2:
        raise ValueError(f"phy2log must be an [L, P] map, got shape {new.shape}")
    if new.shape != old.shape or num_ranks <= 0 or new.shape[-1] % num_ranks:
        return phy2log
    L, P = new.shape
    S = P // num_ranks
    out = new.copy()
    for layer in range(L):
        for r in range(num_ranks):
            sl = slice(r * S, (r + 1) * S)
            incoming = list(new[layer, sl])
            row = [None] * S
            for s, e in enumerate(old[layer, sl]):  # keep what stays, at its old slot
                if e in incoming:
                    incoming.remove(e)
                    row[s] = e
            it = iter(incoming)
            out[layer, sl] = [e if e is not None else next(it) for e in row]
    return out if as_numpy else torch.from_numpy(out).to(phy2log.dtype)


def _returns_tuple(base) -> bool:
    ann = getattr(getattr(base, "rebalance_experts", None), "__annotations__", {}).get("return")
    return "tuple" in str(ann).lower()


def register(name: str = POLICY_NAME) -> type:
    """Add the policy to vLLM's registry under ``name``; returns the class registered.

    vLLM checks a policy name three times: its registry dict (``EPLB_POLICIES``), the option
    type ``EPLBPolicyOption`` (a ``Literal``, asserted equal to the registry's keys) and the
    ``policy`` field of ``EPLBConfig``, a pydantic dataclass whose schema is built from that
    ``Literal``. All three are extended (the config schema rebuilt); nothing else changes.
    Idempotent. vLLM still refuses any policy but "default" while ``use_async`` is on.
    """
    from pydantic.dataclasses import rebuild_dataclass
    from vllm.config import parallel as vcfg
    from vllm.distributed.eplb import policy as vpol

    cls = FlashLBEplbPolicyTuple if _returns_tuple(vpol.AbstractEplbPolicy) else FlashLBEplbPolicy
    if not issubclass(cls, vpol.AbstractEplbPolicy):  # flashlb imported before vLLM was importable
        cls = type(cls.__name__, (cls, vpol.AbstractEplbPolicy), {})
    vpol.EPLB_POLICIES[name] = cls
    names = tuple(dict.fromkeys((*typing.get_args(vcfg.EPLBPolicyOption), *vpol.EPLB_POLICIES)))
    option = typing.Literal[names]  # type: ignore[valid-type]
    vcfg.EPLBPolicyOption = option
    config_cls = vcfg.EPLBConfig
    if typing.get_args(config_cls.__pydantic_fields__["policy"].annotation) != names:
        config_cls.__annotations__["policy"] = option
        config_cls.__dataclass_fields__["policy"].type = option
        config_cls.__pydantic_fields__["policy"].annotation = option
        rebuild_dataclass(config_cls, force=True)
    return cls


def plugin() -> None:
    """The ``vllm.general_plugins`` entry point: register, never break vLLM's start-up."""
    try:
        register()
    except Exception as exc:  # a vLLM whose layout this version does not know
        logger.warning("flashlb: could not register the vLLM EPLB policy: %s", exc)
    from . import vllm_ascend

    vllm_ascend.plugin()
