"""IKE identities: text as written in configs (swanctl conventions) <-> ID payload (RFC 7296 3.5)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address

from ipsecd.iana import IdType
from ipsecd.ike.settings import IkeIdentity

ANY = IkeIdentity(None, b"", "%any")


def parse_identity(text: str) -> IkeIdentity:
    """An IP literal is an address ID, ``user@host`` RFC822, ``@name`` or a name FQDN, ``keyid:HEX`` KEY_ID."""
    text = text.strip()
    if text in ("%any", "", "*"):
        return ANY
    try:
        addr = ip_address(text)
    except ValueError:
        pass
    else:
        kind = IdType.ID_IPV4_ADDR if isinstance(addr, IPv4Address) else IdType.ID_IPV6_ADDR
        return IkeIdentity(kind, addr.packed, str(addr))
    if text.startswith("keyid:"):
        return IkeIdentity(IdType.ID_KEY_ID, bytes.fromhex(text[6:].replace(":", "")), text)
    if text.startswith("@"):
        if text.startswith("@#"):
            return IkeIdentity(IdType.ID_KEY_ID, bytes.fromhex(text[2:]), text)
        return IkeIdentity(IdType.ID_FQDN, text[1:].encode(), text[1:])
    if "@" in text:
        return IkeIdentity(IdType.ID_RFC822_ADDR, text.encode(), text)
    return IkeIdentity(IdType.ID_FQDN, text.encode(), text)


def identity_from_payload(id_type: int, data: bytes) -> IkeIdentity:
    """The identity a peer sent, with a printable text form for logs and status."""
    try:
        kind = IdType(id_type)
    except ValueError:
        return IkeIdentity(id_type, data, f"id-type-{id_type}:{data.hex()}")
    if kind == IdType.ID_IPV4_ADDR and len(data) == 4:
        text = str(IPv4Address(data))
    elif kind == IdType.ID_IPV6_ADDR and len(data) == 16:
        text = str(IPv6Address(data))
    elif kind in (IdType.ID_FQDN, IdType.ID_RFC822_ADDR):
        text = data.decode("utf-8", "replace")
    else:
        text = f"keyid:{data.hex()}" if kind == IdType.ID_KEY_ID else f"{kind.name}:{data.hex()}"
    return IkeIdentity(kind, data, text)
