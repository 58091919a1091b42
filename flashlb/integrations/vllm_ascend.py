"""vllm-ascend: a dynamic-EPLB policy with the contract of its policy factory (the same in
the 0.23.0.post1 release and on main).

``rebalance_experts(current_expert_table [L, D, S], expert_workload [stages, L, D, S] or
[L, D, S])`` -> ``(changed, priority_layers, new_expert_table [L, D, S])``: whether anything
changed, the re-placed layers most gain first, and the full new table (CPU, int64, the
table's layout). The workload is per physical slot, as vllm-ascend measures it; each stage is
one episode. Cherry-picking and the fewest moves are inside (a :class:`flashlb.Balancer` kept
across calls); experts that stay on a device keep their slot, which vllm-ascend's worker
checks before it applies a table.

vllm-ascend accepts policy types 0-3 only, and only type 3 receives per-stage loads, so
flashlb serves slot 3: with ``FLASHLB_VLLM_ASCEND=1`` in the environment the
``vllm.general_plugins`` entry point makes its policy factory return :class:`FlashLBPolicy`
for type 3 (without the replaced policy's warm-up). Balancer options come from the
constructor's keyword arguments or, for the plugin, from ``FLASHLB_BALANCER_OPTIONS`` (a JSON
object of :class:`flashlb.Balancer` keyword arguments).
"""

from __future__ import annotations

import json
import logging
import os

import torch

from ..placement import Placement
from ..redeploy.balancer import Balancer
from . import logical_load

__all__ = ["FlashLBPolicy", "ENABLE_ENV", "OPTIONS_ENV", "balancer_options_from_env", "install",
           "plugin"]

ENABLE_ENV = "FLASHLB_VLLM_ASCEND"
OPTIONS_ENV = "FLASHLB_BALANCER_OPTIONS"
MULTI_STAGE_POLICY_TYPE = 3
logger = logging.getLogger(__name__)


def balancer_options_from_env(environ=None) -> dict:
    """``FLASHLB_BALANCER_OPTIONS`` (a JSON object) -> keyword arguments of Balancer."""
    raw = (os.environ if environ is None else environ).get(OPTIONS_ENV, "").strip()
    if not raw:
        return {}
    try:
        options = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{OPTIONS_ENV} must be a JSON object of Balancer options: {exc}") from None
    except RecursionError:
        raise ValueError(f"{OPTIONS_ENV} must be a JSON object of Balancer options: nested too deeply") from None
    if not isinstance(options, dict):
        raise ValueError(f"{OPTIONS_ENV} must be a JSON object, got {type(options).__name__}")
    return options


class FlashLBPolicy:
    """Constructed with no arguments (as vllm-ascend's factory does); keeps its balancer state
    across calls. Keyword options go to :class:`flashlb.Balancer` unchanged (any it accepts)."""

    def __init__(self, config=None, **balancer_options):
        self.config = config  # older factories hand their dynamic-EPLB config over; unused
        # Bad or unknown options fail here, not at the first cycle inside the EPLB worker.
        Balancer(2, 1, **balancer_options)
        self.balancer_options = balancer_options
        self.balancer: Balancer | None = None

    def rebalance_experts(self, current_expert_table, expert_workload):
        table = torch.as_tensor(current_expert_table)
        if table.dim() != 3 or table.numel() == 0:
            raise ValueError(f"current_expert_table must be a non-empty [L, D, S], got {tuple(table.shape)}")
        if table.dtype.is_floating_point or table.dtype == torch.bool:
            raise ValueError(f"current_expert_table must hold integer expert ids, got {table.dtype}")
        load = torch.as_tensor(expert_workload)
        if load.dim() == 3:
            load = load.unsqueeze(0)
        if load.dim() != 4 or load.shape[1:] != table.shape:
            raise ValueError(f"expert_workload must be [stages, L, D, S] or [L, D, S] matching the "
                             f"table {tuple(table.shape)}, got {tuple(torch.as_tensor(expert_workload).shape)}")
        table = table.cpu().to(torch.int64)
        L, D, S = table.shape
        N = int(table.max()) + 1
        current = Placement.from_device_view(table, N)
        hotness = logical_load(load.cpu(), table, N)  # [stages, L, N]
        if self.balancer is None:
            self.balancer = Balancer(D * S, D, **self.balancer_options)
        up = self.balancer.step(hotness, current)
        new_table = up.placement.device_view().cpu().to(torch.int64).contiguous()
        return bool(up.changed), [int(x) for x in up.layers.tolist()], new_table


def _skip_warm_up() -> None:
    """Stands in for the replaced type-3 policy's warm-up, which flashlb does not need."""


def install(balancer_options: dict | None = None) -> None:
    """Make vllm-ascend's policy factory return FlashLBPolicy for policy type 3.

    Other types go to the original factory. The replaced policy's numba warm-up (called by
    the factory and by the EPLB worker process for type 3) becomes a no-op. Idempotent.
    """
    options = dict(balancer_options or {})
    Balancer(2, 1, **options)  # bad options fail now, before vllm-ascend is touched
    from vllm_ascend.eplb.core.policy import policy_factory

    factory = policy_factory.PolicyFactory
    original = factory.__dict__["generate_policy"]
    original = getattr(original, "__func__", original)
    original = getattr(original, "_flashlb_original", original)

    def generate_policy(policy_type, *args, **kwargs):
        if policy_type == MULTI_STAGE_POLICY_TYPE:
            logger.info("[eplb/policy] Policy: flashlb (type=%s)", policy_type)
            return FlashLBPolicy(**options)
        return original(policy_type, *args, **kwargs)

    generate_policy._flashlb_original = original
    factory.generate_policy = staticmethod(generate_policy)
    policy_factory.warm_up = _skip_warm_up
    try:
        from vllm_ascend.eplb.core.policy import policy_flashlb
    except Exception:  # its heavy dependencies are absent: then nothing can call its warm-up
        return
    policy_flashlb.warm_up = _skip_warm_up


def plugin(environ=None) -> None:
    """Called by the vLLM plugin: serve slot 3 when ``FLASHLB_VLLM_ASCEND=1``."""
    env = os.environ if environ is None else environ
    if env.get(ENABLE_ENV, "").strip().lower() not in ("1", "true", "yes"):
        return
    options = balancer_options_from_env(env)
    try:
        install(options)  # checks the options first: bad ones fail here, also without vllm-ascend
    except ImportError as exc:
        logger.warning("flashlb: %s=1 but vllm-ascend is not importable: %s", ENABLE_ENV, exc)
