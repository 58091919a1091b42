"""Redeployment: fewest expert moves, layer-wise cherry-picking, and replay of traces."""

from ..align import align_to
from .balancer import Balancer, Update, default_prices
from .simulate import POLICIES, SimulationResult, boot_placement, simulate

__all__ = ["align_to", "Balancer", "Update", "default_prices", "simulate", "SimulationResult", "POLICIES",
           "boot_placement"]
