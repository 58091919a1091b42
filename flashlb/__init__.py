"""flashlb: an expert-parallelism load balancer for Mixture-of-Experts inference.

Data model: ``hotness [T, L, N]`` loads per episode, layer and logical expert; a
:class:`Placement` holds ``phy2log [L, P]``, ``log2phy [L, N, R]`` and ``logcnt [L, N]``.
"""

from ._version import __version__


def _check_torch() -> None:
    """The C++ extension works only with the torch release it was compiled against."""
    try:
        from ._build_info import TORCH_VERSION
    except ImportError:  # a source checkout that was never built: ops/ says what to do
        return
    import torch

    built, loaded = TORCH_VERSION.split("+")[0], torch.__version__.split("+")[0]
    if built != loaded:
        raise ImportError(
            f"flashlb {__version__} was built against torch {TORCH_VERSION}, but torch "
            f"{torch.__version__} is loaded: rebuild flashlb with this torch "
            f"(pip install --no-build-isolation --force-reinstall flashlb, or bash build.sh)")


_check_torch()

from . import ops  # noqa: E402,F401  (registers torch.ops.flashlb.*)
from . import metrics  # noqa: E402
from .api import plan, plan_workloads, rebalance_experts  # noqa: E402
from .placement import Placement  # noqa: E402
from .recorder import HotnessRecorder  # noqa: E402
from .redeploy import Balancer, Update, align_to, boot_placement, simulate  # noqa: E402

__all__ = ["Balancer", "HotnessRecorder", "Placement", "Update", "align_to", "boot_placement", "metrics",
           "plan", "plan_workloads", "rebalance_experts", "simulate", "__version__"]
