"""Node CIDR allocators."""

from controller.allocators.cidrset import CIDRSet, CIDRSetError, NoCIDRsRemainingError, node_mask_bounds
from controller.allocators.claims import ClaimedSubnets

__all__ = ["CIDRSet", "CIDRSetError", "ClaimedSubnets", "NoCIDRsRemainingError", "node_mask_bounds"]
