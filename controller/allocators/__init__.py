"""Node CIDR allocators."""

from controller.allocators.cidrset import CIDRSet, CIDRSetError, NoCIDRsRemainingError

__all__ = ["CIDRSet", "CIDRSetError", "NoCIDRsRemainingError"]
