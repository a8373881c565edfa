"""Making peer-supplied text safe to log.

Anything a peer chose (identities, EAP identities, RADIUS attributes, certificate
subjects, proposal lists, notify data) goes through :func:`safe` before it reaches a
log line: control characters (newlines above all, which would let a peer forge a
whole log record, ``CRITICAL`` level included) and non-printable characters are
escaped as ``\\xNN``/``\\uNNNN``, and the text is cut to ``limit`` characters with
a marker saying how much was left out, so one request cannot write a 50 KB line.
"""

from __future__ import annotations

DEFAULT_LIMIT = 256


class Escaped(str):
    """Text that went through :func:`safe` already: escaping it again would double its backslashes."""

    __slots__ = ()


def safe(value: object, limit: int = DEFAULT_LIMIT) -> Escaped:
    """``value`` as printable, single-line text of at most ``limit`` characters (plus a marker)."""
    if isinstance(value, Escaped) and (limit <= 0 or len(value) <= limit):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        text = bytes(value).decode("utf-8", "surrogateescape")  # bad bytes come out as \xNN
    else:
        text = str(value)
    cut = len(text) - limit if limit > 0 and len(text) > limit else 0
    if cut:
        text = text[:limit]
    if not text.isprintable() or "\\" in text:
        text = "".join(_escape(ch) for ch in text)
    return Escaped(f"{text}...[{cut} more]" if cut else text)


def _escape(ch: str) -> str:
    if ch == "\\":
        return "\\\\"
    if ch.isprintable():
        return ch
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
