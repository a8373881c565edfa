"""Engine pairs (tests/ike_pair.py) that authenticate with certificates and EAP.

Credential stores are built in memory from tests/pki.py certificates; the engines' wall
clock is the PKI's ``now`` (``wall_offset``), so validity and CRLs behave as on a gateway.
:class:`FakeRadius` plays the RADIUS server for EAP-RADIUS: it runs ipsecd's own EAP
authenticator (MSCHAPv2) behind Access-Challenge/Accept/Reject answers, and
:func:`pump_with_radius` answers every ``AuthRequest`` the gateway emits, optionally late
or never, to exercise the held IKE_AUTH response.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from ipsecd.credentials import CertEntry, CredentialStore, CrlEntry, KeyEntry
from ipsecd.eap.method import Failure, Pending, Secret, Send, Success
from ipsecd.eap.mschapv2 import MschapV2Authenticator
from ipsecd.eap.packet import EapPacket
from ipsecd.eap.radius import AccessRequest, AnswerKind, RadiusAnswer
from ipsecd.eap.session import EapAuthenticator, MethodOffer
from ipsecd.iana import EapType
from ipsecd.identity import Identity
from ipsecd.ike.events import AuthRequest
from ipsecd.ike.manager import IkeManager
from ipsecd.ike.settings import AuthSettings, IkeSettings
from tests.ike_pair import Pair
from tests.pki import Issued, TestPki


def store_of(own: Iterable[Issued] = (), intermediates: Iterable[Issued] = (), cas: Iterable[Issued] = (),
             crls: Iterable[x509.CertificateRevocationList] = ()) -> CredentialStore:
    own = list(own)
    return CredentialStore.build(
        certs=[CertEntry(i.cert, Path(f"{i.cn}.pem")) for i in (*own, *intermediates)],
        cas=[CertEntry(c.cert, Path(f"{c.cn}.pem")) for c in cas],
        crls=[CrlEntry(c, Path(f"crl{n}.pem")) for n, c in enumerate(crls)],
        keys=[KeyEntry(i.key, Path(f"{i.cn}.key")) for i in own],
        directory=Path("/test/credentials"))


def secrets(table: Mapping[str, Secret]) -> object:
    """An ``eap_secret`` lookup over {EAP identity: password or NtHash}."""
    def lookup(identity: bytes) -> Secret | None:
        return table.get(identity.decode(errors="replace"))
    return lookup


def with_auth(base: IkeSettings, local: str | AuthSettings, remote: str | AuthSettings, **kw: object) -> IkeSettings:
    la = local if isinstance(local, AuthSettings) else AuthSettings(local)
    ra = remote if isinstance(remote, AuthSettings) else AuthSettings(remote)
    return dataclasses.replace(base, local_auth=la, remote_auth=ra, **kw)  # type: ignore[arg-type]


def pair_of(sa: IkeSettings | list[IkeSettings], sb: IkeSettings | list[IkeSettings], pki: TestPki,
            store_a: CredentialStore | None = None, store_b: CredentialStore | None = None) -> Pair:
    offset = pki.now.timestamp() - 1000.0
    a = IkeManager(sa if isinstance(sa, list) else [sa], now=1000.0)
    b = IkeManager(sb if isinstance(sb, list) else [sb], now=1000.0)
    a.set_credentials(store_a or CredentialStore(None), offset)
    b.set_credentials(store_b or CredentialStore(None), offset)
    return Pair(a, b)


def eap_id(text: str) -> Identity:
    return Identity.parse(text)


@dataclass
class FakeRadius:
    """A RADIUS server in memory: EAP-MSCHAPv2 against ``users``, answers as RadiusAnswers."""

    users: dict[str, str]
    answer_after: int = 0  # Access-Requests that get no answer at all first (a dead server)
    reject_all: bool = False
    seen: list[AccessRequest] = field(default_factory=list)
    _sessions: dict[bytes, EapAuthenticator] = field(default_factory=dict)

    def answer(self, request: AccessRequest) -> RadiusAnswer | None:
        self.seen.append(request)
        if len(self.seen) <= self.answer_after:
            return None
        if self.reject_all:
            return RadiusAnswer(AnswerKind.REJECT, reply_message="account locked", server="fake:1812")
        response = EapPacket.decode(request.eap_message)
        if request.state is None:  # the relay opens with EAP-Response/Identity
            session = EapAuthenticator(
                [MethodOffer(EapType.MSCHAPV2, lambda ident: MschapV2Authenticator(
                    ident, lambda u: self.users.get(u.decode())))], identity=response.data)
            state = b"state-%d" % len(self._sessions)
            self._sessions[state] = session
            step = session.start()
        else:
            state = request.state
            step = self._sessions[state].process(request.eap_message)
        if isinstance(step, Send):
            return RadiusAnswer(AnswerKind.CHALLENGE, eap_message=step.packet.encode(), state=state,
                                server="fake:1812")
        if isinstance(step, Success):
            assert step.final is not None
            return RadiusAnswer(AnswerKind.ACCEPT, eap_message=step.final.encode(), msk=step.msk[:32],
                                framed_ip="10.3.0.7", classes=(b"class-1",), server="fake:1812")
        assert isinstance(step, Failure) and not isinstance(step, Pending)
        final = step.final.encode() if step.final is not None else b""
        return RadiusAnswer(AnswerKind.REJECT, eap_message=final, server="fake:1812")


def pump_with_radius(pair: Pair, radius: FakeRadius, *, seconds: float = 60.0, delay: float = 0.0) -> list[AuthRequest]:
    """Run the pair; every AuthRequest of the gateway (b) is answered by ``radius`` after ``delay``
    seconds (TIMEOUT when it does not answer). Returns the requests seen."""
    handled: list[AuthRequest] = []
    due: list[tuple[float, AuthRequest, RadiusAnswer]] = []
    end = pair.now + seconds
    for _ in range(2000):
        pair._move()
        for ev in pair.events_b:
            if isinstance(ev, AuthRequest) and ev not in handled:
                handled.append(ev)
                assert isinstance(ev.request, AccessRequest)
                answer = radius.answer(ev.request) or RadiusAnswer(AnswerKind.TIMEOUT)
                due.append((pair.now + delay, ev, answer))
        for item in [d for d in due if d[0] <= pair.now]:
            due.remove(item)
            pair.b.auth_answer(item[1].ike_sa_id, item[1].token, item[2], pair.now)
        if pair._move():
            continue
        timers = [t for t in (pair.a.get_timer(), pair.b.get_timer(), *(d[0] for d in due))
                  if t is not None and t <= end]
        if not timers:
            return handled
        pair.now = max(pair.now, min(timers))
        pair.a.handle_timer(pair.now)
        pair.b.handle_timer(pair.now)
    raise AssertionError("pair did not settle")
