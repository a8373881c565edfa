"""ipsecd: a userspace IKEv2 / ESP VPN daemon."""

__version__ = "0.1.0"
