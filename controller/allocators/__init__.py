"""Node CIDR allocators."""

from controller.allocators.cidrset import CIDRSet, CIDRSetError, NoCIDRsRemainingError
from controller.allocators.claims import ClaimedSubnets

__all__ = ["CIDRSet", "CIDRSetError", "ClaimedSubnets", "NoCIDRsRemainingError"]
