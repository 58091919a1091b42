"""flashlb: an expert-parallelism load balancer for Mixture-of-Experts inference.

Data model: ``hotness [T, L, N]`` loads per episode, layer and logical expert; a
:class:`Placement` holds ``phy2log [L, P]``, ``log2phy [L, N, R]`` and ``logcnt [L, N]``.
"""

from . import ops  # noqa: F401  (registers torch.ops.flashlb.*)
from . import metrics
from .api import plan, rebalance_experts
from .placement import Placement
from .recorder import HotnessRecorder
from .redeploy import Balancer, Update, align_to, simulate

__all__ = ["Balancer", "HotnessRecorder", "Placement", "Update", "align_to", "metrics", "plan",
           "rebalance_experts", "simulate"]
__version__ = "0.1.0"
