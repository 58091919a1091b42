"""SGLang: an EPLB algorithm, the install function that plugs it in, and the offline
``--init-expert-location`` file.

``rebalance_experts(tokens_per_expert [T, L, N] or [L, N], num_physical_experts,
num_local_physical_experts, num_groups, num_nodes, algorithm=None)`` returns what SGLang's
algorithms return: ``(physical_to_logical_map [L, P], logical_to_all_physical_map [L, N, X]
-1 padded, expert_count [L, N])``, CPU int64 tensors (as SGLang's DeepSeek algorithm does;
SGLang moves them to its device). ``algorithm`` is SGLang's own dispatch value, accepted and
ignored; flashlb's options travel separately (``plan_options``).

SGLang's algorithms are an enum plus an if-chain; :func:`install` wraps the two functions the
server calls (``compute_algorithm`` and ``rebalance_experts`` of
``sglang.srt.eplb.eplb_algorithms``) so ``--eplb-algorithm flashlb`` reaches flashlb and every
other name reaches SGLang unchanged. SGLang runs its general plugins (entry point group
``sglang.srt.plugins``) early in every server process; flashlb's entry point there calls
:func:`install` (harmless until ``--eplb-algorithm flashlb`` asks for it). Offline: :func:`write_init_expert_location` writes the
``.json`` or ``.pt`` file SGLang's loader reads.
"""

from __future__ import annotations

import logging
import operator
from pathlib import Path

import torch

from ..api import plan
from ..placement import Placement

__all__ = ["ALGORITHM_NAME", "FLASHLB", "rebalance_experts", "install", "plugin",
           "write_init_expert_location"]

ALGORITHM_NAME = "flashlb"
logger = logging.getLogger(__name__)
INIT_SUFFIXES = (".json", ".pt")


class _FlashLBAlgorithm:
    """The value ``compute_algorithm("flashlb")`` returns once installed (SGLang's enum
    cannot gain members)."""

    name = ALGORITHM_NAME

    def __repr__(self) -> str:
        return "EplbAlgorithm.flashlb"


FLASHLB = _FlashLBAlgorithm()


def _size(value) -> int | None:
    """An integer size - Python, numpy or a 0-d integer tensor - as an int; None otherwise
    (bools and floats included)."""
    if isinstance(value, bool) or (isinstance(value, torch.Tensor) and value.dtype == torch.bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _plan(tokens_per_expert, num_physical_experts, num_local_physical_experts, num_groups,
          num_nodes, plan_options) -> Placement:
    physical, local = _size(num_physical_experts), _size(num_local_physical_experts)
    for name, v, raw in (("num_physical_experts", physical, num_physical_experts),
                         ("num_local_physical_experts", local, num_local_physical_experts)):
        if v is None or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {raw!r}")
    if physical % local:
        raise ValueError(f"num_local_physical_experts={local} must divide num_physical_experts={physical}")
    if isinstance(tokens_per_expert, torch.Tensor):
        tokens_per_expert = tokens_per_expert.detach().cpu()
    return plan(tokens_per_expert, physical, physical // local, num_groups=num_groups,
                num_nodes=num_nodes, **(plan_options or {}))


def rebalance_experts(tokens_per_expert: torch.Tensor, num_physical_experts: int,
                      num_local_physical_experts: int, num_groups: int | None, num_nodes: int,
                      algorithm=None, *, plan_options: dict | None = None):
    """SGLang's algorithm signature. tokens_per_expert: [T, L, N] (or [L, N]).

    Returns (phy2log [L, P], log2phy [L, N, X] -1 padded, logcnt [L, N]), CPU int64.
    ``plan_options``: keyword options of :func:`flashlb.plan` (not ``algorithm``).
    """
    if plan_options and "algorithm" in plan_options:
        raise ValueError("plan_options must not hold 'algorithm': this entry point is flashlb's")
    p = _plan(tokens_per_expert, num_physical_experts, num_local_physical_experts, num_groups,
              num_nodes, plan_options).to("cpu")
    return p.phy2log, p.log2phy, p.logcnt


def install(plan_options: dict | None = None, name: str = ALGORITHM_NAME) -> None:
    """Plug flashlb into SGLang's EPLB dispatch under ``--eplb-algorithm <name>``.

    Call it in the server process before SGLang computes a placement (e.g. in the launch
    script, before ``sglang.launch_server``'s main). Idempotent.
    """
    from sglang.srt.eplb import eplb_algorithms as algos

    original_compute = getattr(algos.compute_algorithm, "_flashlb_original", algos.compute_algorithm)
    original_rebalance = getattr(algos.rebalance_experts, "_flashlb_original", algos.rebalance_experts)
    options = dict(plan_options or {})

    def compute_algorithm(raw_algorithm, num_groups, num_nodes):
        if raw_algorithm == name:
            return FLASHLB
        return original_compute(raw_algorithm=raw_algorithm, num_groups=num_groups, num_nodes=num_nodes)

    def dispatch(tokens_per_expert, num_physical_experts, num_local_physical_experts, num_groups,
                 num_nodes, algorithm):
        if algorithm is FLASHLB:
            return rebalance_experts(tokens_per_expert, num_physical_experts,
                                     num_local_physical_experts, num_groups, num_nodes,
                                     plan_options=options)
        return original_rebalance(tokens_per_expert=tokens_per_expert,
                                  num_physical_experts=num_physical_experts,
                                  num_local_physical_experts=num_local_physical_experts,
                                  num_groups=num_groups, num_nodes=num_nodes, algorithm=algorithm)

    compute_algorithm._flashlb_original = original_compute
    dispatch._flashlb_original = original_rebalance
    algos.compute_algorithm = compute_algorithm
    algos.rebalance_experts = dispatch


def plugin() -> None:
    """The ``sglang.srt.plugins`` entry point: :func:`install`, never breaking start-up."""
    try:
        install()
    except Exception as exc:  # an SGLang whose EPLB layout this version does not know
        logger.warning("flashlb: could not plug into SGLang's EPLB dispatch: %s", exc)


def write_init_expert_location(path, tokens_per_expert: torch.Tensor, num_physical_experts: int,
                               num_local_physical_experts: int, num_groups: int | None = None,
                               num_nodes: int = 1, **plan_options) -> Path:
    """Plan and write the ``--init-expert-location`` file (atomically).

    ``.json``: ``{"physical_to_logical_map": [[...]]}``; ``.pt``: ``{"physical_to_logical_map":
    int64 tensor}`` - only the key SGLang's loader passes to its constructor. Reading it back
    with :meth:`flashlb.Placement.load` needs ``num_devices``.
    """
    path = Path(path)
    if path.suffix.lower() not in INIT_SUFFIXES:
        raise ValueError(f"path must end in .json or .pt (what SGLang reads), got {path.name!r}")
    _plan(tokens_per_expert, num_physical_experts, num_local_physical_experts, num_groups,
          num_nodes, plan_options).save(path)
    return path
