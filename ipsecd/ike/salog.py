"""The log of one IKE SA: a prefix, escaped arguments, and a cap on what unauthenticated peers write.

Every argument of a line (identities, reasons, proposal lists: anything a peer may have
chosen) goes through ``logsafe.safe``, so a newline or an escape sequence in a peer's
identity never reaches the log as such (issue 13: a forged ``CRITICAL`` line).

Until a peer's IKE_AUTH arrives, the peer of a responder SA is anyone who can send a
datagram, spoofed sources included (IKE_SA_INIT refusals, half-open time-outs): a flood
of them must not become a flood of log lines. Lines of such SAs at INFO and above share
one rate limit per message format across the engine (the format strings are ours, a
fixed vocabulary), a few lines per interval and then a summary of how many were
suppressed. From IKE_AUTH on (the peer named itself and proved it receives at its
address; the front door bounds each address) every line is written: a login storm keeps
its audit trail.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any

from ipsecd.logsafe import Escaped, safe
from ipsecd.ratelimit import RateLimitedLogger

if TYPE_CHECKING:
    from ipsecd.ike.ike_sa import IkeSa

ARG_LIMIT = 512  # characters of one argument (a reason may quote a little peer text itself)


_PASS = (int, float, Escaped)  # a tuple: isinstance with a union object is slower


def _clean(arg: object) -> object:
    if isinstance(arg, _PASS):
        return arg
    return safe(arg, ARG_LIMIT)


class SaLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Prefixes every line with the connection name, IKE SA number and peer address."""

    def __init__(self, logger: logging.Logger, sa: IkeSa, limiters: MutableMapping[str, RateLimitedLogger]) -> None:
        super().__init__(logger, {})
        self.sa = sa
        self.limiters = limiters

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if not self.isEnabledFor(level):
            return
        sa = self.sa
        text = f"[{safe(sa.settings.name)}|{sa.ike_sa_id}] {safe(sa.remote[0])}: {msg}"
        clean = tuple(_clean(a) for a in args)
        if level >= logging.INFO and sa.remote_identity is None and not sa.initiator:
            limiter = self.limiters.get(self.logger.name)
            if limiter is None:
                limiter = self.limiters[self.logger.name] = RateLimitedLogger(self.logger)
            limiter.log(level, f"unauthenticated: {msg}", text, *clean, now=sa.now)
            return
        self.logger.log(level, text, *clean, **kwargs)
