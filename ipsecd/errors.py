"""Error classes shared by the protocol engines (h11-style split).

``LocalProtocolError``: we were asked to do something the protocol forbids.
``RemoteProtocolError``: the peer sent something invalid; ``notify`` names the
NOTIFY to answer with, or is None when the RFC says to drop silently.
"""

from __future__ import annotations

from ipsecd.iana import NotifyType


class IpsecdError(Exception):
    """Base of every error ipsecd raises on purpose."""


class LocalProtocolError(IpsecdError):
    pass


class RemoteProtocolError(IpsecdError):
    def __init__(self, message: str, notify: NotifyType | None = None, notify_data: bytes = b"") -> None:
        super().__init__(message)
        self.notify = notify
        self.notify_data = notify_data


class IntegrityError(RemoteProtocolError):
    """An ICV or AEAD tag did not verify: always a silent drop (RFC 7296 2.21.1)."""

    def __init__(self, message: str = "integrity check failed") -> None:
        super().__init__(message, notify=None)


class ConfigError(IpsecdError):
    """A configuration file is invalid; the message names file, line and key path."""
