"""A closed IKE SA is freed by reference counting alone (issue 11: GC pauses).

With tens of thousands of SAs a full pass of the cyclic garbage collector stops the IKE
process for 150-500 ms; ipsecd/gcpolicy.py keeps those passes rare and short by freezing
what survives, which is only safe when what dies is not a reference cycle. Each test runs
one way an IKE SA ends, in the in-process engine pair with the collector disabled, and
checks with weak references that every IKE SA that closed (with its Child SAs, exchanges,
tasks, fragments, EAP and MOBIKE state: all owned by it) is gone right after the close.
On failure the message lists what still refers to the SA (gc.get_referrers).
"""

from __future__ import annotations

import dataclasses
import gc
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType, SimpleNamespace

import pytest

from ipsecd.iana import NotifyType
from ipsecd.ike.events import Cause, IkeSaClosed
from ipsecd.ike.ike_sa import HALF_OPEN_TIMEOUT, IkeSa, IkeState
from ipsecd.ike.manager import IkeManager
from ipsecd.ike.message import decode_message, encode_message
from ipsecd.ike.payloads import NotifyPayload
from ipsecd.ike.settings import AuthSettings
from tests.auth_pair import FakeRadius, eap_id, pair_of, pump_with_radius, secrets, store_of, with_auth
from tests.ike_pair import A_ADDR, B_ADDR, Pair, make_pair, make_settings, make_settings_b
from tests.pki import CLIENT_AUTH, TestPki


@contextmanager
def gc_off() -> Iterator[None]:
    """Only reference counting frees anything inside; the collector is back on afterwards."""
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class Watch:
    """Weak references to every IKE SA the pair's managers ever handle (their ``_collect``)."""

    def __init__(self, *mgrs: IkeManager) -> None:
        self.refs: dict[tuple[int, int], weakref.ref[IkeSa]] = {}  # (manager, IKE SA id): ids are per manager
        for mgr in mgrs:
            self.add(mgr)

    def add(self, mgr: IkeManager) -> None:
        owner, key = weakref.ref(mgr), id(mgr)  # weak: a manager dropped by the test (a reboot) dies with its SAs

        def collect(sa: IkeSa) -> None:
            self.refs.setdefault((key, sa.ike_sa_id), weakref.ref(sa))
            m = owner()
            assert m is not None
            IkeManager._collect(m, sa)
        mgr._collect = collect  # type: ignore[method-assign]

    def closed_alive(self) -> list[str]:
        """What still holds each closed IKE SA (an empty list: all freed)."""
        out = []
        for ref in self.refs.values():
            sa = ref()
            if sa is not None and sa.state == IkeState.CLOSED:
                holders = [type(r).__name__ for r in gc.get_referrers(sa) if not isinstance(r, FrameType)]
                out.append(f"IKE SA {sa.ike_sa_id} ({sa.fail_reason}) held by {holders}")
            del sa
        return out

    def freed(self) -> int:
        return sum(1 for r in self.refs.values() if r() is None)


def _closed(events: list[object]) -> list[IkeSaClosed]:
    return [e for e in events if isinstance(e, IkeSaClosed)]


def _run(make: Callable[[], Pair], drive: Callable[[Pair], None], at_least: int,
         watch: Watch | None = None) -> Pair:
    """``drive`` the pair with GC off; then every closed IKE SA is already gone."""
    watch = watch or Watch()
    with gc_off():
        pair = make()
        watch.add(pair.a)
        watch.add(pair.b)
        drive(pair)
        leaks = watch.closed_alive()
        assert leaks == [], leaks
        assert watch.freed() >= at_least, (watch.freed(), len(watch.refs))
        garbage = ipsecd_garbage()
        assert garbage == [], garbage
    return pair


def ipsecd_garbage() -> list[str]:
    """The ipsecd objects only the cyclic collector would free now (DEBUG_SAVEALL keeps
    them in gc.garbage to be named): the parts of closed SAs in a cycle of their own."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        found = sorted({type(o).__qualname__ for o in gc.garbage if type(o).__module__.startswith("ipsecd.")})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    return found


def _up(pair: Pair) -> None:
    pair.a.initiate("conn", pair.now)
    pair.run_until_quiet(30)
    assert [s.state for s in pair.a.list_sas()] == [IkeState.ESTABLISHED]


# --------------------------------------------------------------------------- the usual life
def test_established_rekeyed_and_deleted() -> None:
    def drive(pair: Pair) -> None:
        _up(pair)
        (ia,) = pair.a.list_sas()
        pair.a.rekey_child(ia.children[0].spi_in, pair.now)  # traffic-free Child SA rekey
        pair.run_until_quiet(30)
        pair.b.rekey_ike(pair.b.list_sas()[0].ike_sa_id, pair.now)  # IKE rekey: the old SA closes
        pair.run_until_quiet(30)
        del ia
        assert pair.a.terminate("conn", pair.now) == 1
        pair.run_until_quiet(30)
        assert pair.a.list_sas() == [] and pair.b.list_sas() == []
    _run(make_pair, drive, at_least=4)


def test_reauthenticated_and_child_deleted() -> None:
    """Reauthentication (a new IKE SA, then the old one deleted) and a Child SA deleted alone."""
    def drive(pair: Pair) -> None:
        _up(pair)
        (old,) = pair.a.list_sas()
        old_id = old.ike_sa_id
        del old
        assert pair.a.reauthenticate(old_id, pair.now) is not None
        pair.run_until_quiet(30)
        (new,) = pair.a.list_sas()
        assert new.ike_sa_id != old_id and new.state == IkeState.ESTABLISHED
        spi = new.children[0].spi_in
        del new
        assert pair.a.delete_child(spi, pair.now)
        pair.run_until_quiet(30)
        assert not pair.a.list_sas()[0].children
    _run(make_pair, drive, at_least=2)


@pytest.mark.parametrize("seed", range(3))
def test_ike_rekey_collision(seed: int) -> None:
    """Both ends rekey at once (RFC 7296 2.8.2): the redundant new SA and both old ones close."""
    def drive(pair: Pair) -> None:
        _up(pair)
        pair.a.rekey_ike(pair.a.list_sas()[0].ike_sa_id, pair.now)
        pair.b.rekey_ike(pair.b.list_sas()[0].ike_sa_id, pair.now)
        pair.run_until_quiet(120)
        assert len(pair.a.list_sas()) == 1
    _run(lambda: make_pair(seed=seed), drive, at_least=2)


# --------------------------------------------------------------------------- failures
def test_authentication_failure() -> None:
    def drive(pair: Pair) -> None:
        pair.a.initiate("conn", pair.now)
        pair.run_until_quiet(30)
        assert pair.a.list_sas() == [] and pair.b.list_sas() == []
        assert _closed(pair.events_a)[0].cause is Cause.AUTH_FAILED
    _run(lambda: make_pair(make_settings(psk=b"not the right key")), drive, at_least=2)


def test_retransmission_gives_up() -> None:
    """The peer never answers our IKE_SA_INIT: the initiator gives up after its tries."""
    def drive(pair: Pair) -> None:
        pair.a.initiate("conn", pair.now)
        pair.run_until_quiet(60)
        assert pair.a.list_sas() == [] and _closed(pair.events_a)[0].cause is Cause.TIMEOUT
    _run(lambda: make_pair(deliver=lambda i, d, tag: False), drive, at_least=1)


def test_dead_peer() -> None:
    """An established SA whose peer vanished: DPD, retransmissions, PEER_DEAD."""
    sa, sb = (dataclasses.replace(s, dpd_delay=30.0) for s in (make_settings(), make_settings_b()))

    def drive(pair: Pair) -> None:
        _up(pair)
        pair.deliver = lambda i, d, tag: False
        pair.run_until_quiet(200)
        assert pair.a.list_sas() == [] and _closed(pair.events_a)[0].cause is Cause.PEER_DEAD
    _run(lambda: make_pair(sa, sb), drive, at_least=1)


def test_half_open_expires() -> None:
    """IKE_SA_INIT answered, IKE_AUTH never arrives: the responder drops the half-open SA."""
    def drive(pair: Pair) -> None:
        pair.deliver = lambda i, d, tag: i == 0 or tag == "b->a"  # only A's IKE_SA_INIT gets through
        pair.a.initiate("conn", pair.now)
        pair.advance(HALF_OPEN_TIMEOUT + 30)
        assert pair.b.list_sas() == [] and _closed(pair.events_b)[0].cause is Cause.TIMEOUT
    _run(make_pair, drive, at_least=2)


# --------------------------------------------------------------------------- replacements
def test_initial_contact_replaces_the_stale_sa() -> None:
    watch, engines = Watch(), []

    def drive(pair: Pair) -> None:
        _up(pair)
        engines.append(pair.a)
        # A rebooted. (Kept: an engine and its live SAs are a cycle through the engine's indexes;
        # an engine lives as long as its process. Only closed SAs matter here.)
        pair.a = IkeManager([pair.a.connections[0]], now=pair.now)
        watch.add(pair.a)
        pair.now += 100
        pair.a.initiate("conn", pair.now)
        pair.run_until_quiet(30)
        assert any(c.cause is Cause.REPLACED for c in _closed(pair.events_b))
        assert len(pair.b.list_sas()) == 1
    _run(make_pair, drive, at_least=1, watch=watch)


def test_unique_replace() -> None:
    sa, sb = (dataclasses.replace(s, unique="replace") for s in (make_settings(), make_settings_b()))

    def drive(pair: Pair) -> None:
        _up(pair)
        pair.a.initiate("conn", pair.now)  # a second IKE SA of the same identities
        pair.run_until_quiet(30)
        assert _closed(pair.events_b) and len(pair.b.list_sas()) == 1  # both ends replace: Deletes cross
    _run(lambda: make_pair(sa, sb), drive, at_least=2)


def test_redirected_at_ike_sa_init() -> None:
    """RFC 5685: a drained gateway answers IKE_SA_INIT with REDIRECT; its SA closes at once."""
    def drive(pair: Pair) -> None:
        pair.b.redirect(None, "192.0.2.99", pair.now)
        pair.a.initiate("conn", pair.now)
        ((data, local, remote, _),) = pair.a.datagrams_to_send()
        msg = decode_message(data)
        msg.payloads.append(NotifyPayload(NotifyType.REDIRECT_SUPPORTED))  # ipsecd's client does not announce it
        pair.b.receive_datagram(encode_message(msg), remote, local, pair.now)
        pair.run_until_quiet(60)
        assert any(c.cause is Cause.REDIRECTED for c in _closed(pair.events_b))
    _run(make_pair, drive, at_least=2)


def test_redirected_when_established() -> None:
    def drive(pair: Pair) -> None:
        _up(pair)
        (sa_b,) = pair.b.list_sas()
        sa_b.auth_ext.redirect_supported = True
        del sa_b
        assert pair.b.redirect("conn", "gw2.example.com", pair.now) == 1
        pair.run_until_quiet(30)
        assert pair.a.terminate("conn", pair.now) == 1  # ipsecd as a client does not follow redirects
        pair.run_until_quiet(30)
        assert pair.b.list_sas() == []
    _run(make_pair, drive, at_least=2)


def test_mobike_roam_then_delete() -> None:
    """RFC 4555: an address update (MOBIKE tasks and state, the probe fan-out) leaves no cycle."""
    def drive(pair: Pair) -> None:
        _up(pair)
        (ia,) = pair.a.list_sas()
        assert ia.mobike.enabled and pair.a.roam(ia.ike_sa_id, [("192.0.2.11", B_ADDR), (A_ADDR, B_ADDR)], pair.now)
        del ia
        pair.run_until_quiet(30)
        assert pair.a.terminate("conn", pair.now) == 1
        pair.run_until_quiet(30)
        assert pair.a.list_sas() == [] and pair.b.list_sas() == []
    _run(make_pair, drive, at_least=2)


# --------------------------------------------------------------------------- EAP
PASSWORDS = {"alice": "alice password"}


@pytest.fixture
def certs(pki: TestPki) -> SimpleNamespace:
    root = pki.root("ipsecd test root", "p256")
    return SimpleNamespace(root=root, gw=pki.end_entity(root, "b.test", "p256"),
                           client=pki.end_entity(root, "a.test", "p256", ekus=[CLIENT_AUTH]))


def _eap_pair(pki: TestPki, certs: SimpleNamespace, gateway: str, client: str = "eap-mschapv2",
              password: str = "alice password") -> Pair:
    """A Windows-like client (EAP-MSCHAPv2 or EAP-TLS as alice) and a certificate gateway."""
    ident = "alice@example.com" if client == "eap-tls" else "alice"
    sa = with_auth(dataclasses.replace(make_settings(), local_id=None), AuthSettings(client, eap_id=eap_id(ident)),
                   "pubkey", eap_secret=secrets({"alice": password}))
    sb = with_auth(make_settings_b(remote_id="%any"), "pubkey", AuthSettings(gateway, eap_id=eap_id("%any")),
                   eap_secret=secrets(PASSWORDS))
    own = certs.client
    if client == "eap-tls":
        own = pki.issue("alice", certs.root, "p256", sans=["email:alice@example.com"], ekus=[CLIENT_AUTH])
    return pair_of(sa, sb, pki, store_of([own], cas=[certs.root]), store_of([certs.gw], cas=[certs.root]))


@pytest.mark.parametrize(("method", "password"), [("eap-mschapv2", "alice password"), ("eap-mschapv2", "wrong"),
                                                  ("eap-tls", "")])
def test_eap(pki: TestPki, certs: SimpleNamespace, method: str, password: str) -> None:
    def drive(pair: Pair) -> None:
        pair.a.initiate("conn", pair.now)
        pair.run_until_quiet(60)
        if password == "wrong":
            assert pair.b.list_sas() == [] and _closed(pair.events_b)[0].cause is Cause.AUTH_FAILED
            return
        assert [s.state for s in pair.b.list_sas()] == [IkeState.ESTABLISHED]
        pair.b.terminate("conn", pair.now)
        pair.run_until_quiet(30)
        assert pair.a.list_sas() == [] and pair.b.list_sas() == []
    _run(lambda: _eap_pair(pki, certs, method, method, password), drive, at_least=2)


@pytest.mark.parametrize("outcome", ["accept", "reject", "abandoned"])
def test_eap_radius(pki: TestPki, certs: SimpleNamespace, outcome: str) -> None:
    """EAP relayed to RADIUS: the held IKE_AUTH (a WAIT task) is freed with its SA too."""
    radius = FakeRadius(dict(PASSWORDS), reject_all=outcome == "reject")  # outlives the check: test-side cycles

    def drive(pair: Pair) -> None:
        if outcome == "abandoned":
            pair.deliver = lambda i, data, tag: not (tag == "a->b" and i > 3)  # the client goes silent mid-EAP
        pair.a.initiate("conn", pair.now)
        pump_with_radius(pair, radius, seconds=120)
        if outcome == "accept":
            assert [s.state for s in pair.b.list_sas()] == [IkeState.ESTABLISHED]
            pair.a.terminate("conn", pair.now)
            pair.run_until_quiet(30)
        assert pair.b.list_sas() == []
        if outcome == "abandoned":
            assert _closed(pair.events_b)[0].cause is Cause.TIMEOUT
    _run(lambda: _eap_pair(pki, certs, "eap-radius"), drive, at_least=1)


# --------------------------------------------------------------------------- the worker's SA records
@pytest.mark.parametrize("suite", ["aes256gcm16", "aes256gcm16-esn", "aes256-sha256"])
def test_worker_sa_records_freed_on_delete(suite: str) -> None:
    """The data-plane worker's SAs (esp/sa.py, their transforms, the flow cache entry) go with
    DeleteSa -- after packets have built their cipher contexts both ways."""
    from ipsecd.dataplane import messages as m
    from ipsecd.esp.sa import SaParams
    from ipsecd.iana import EncrId, IntegId
    from tests.dp_static_peer import static_params
    from tests.test_dataplane_state import REQID, esp_out, make_state, messages
    from tests.test_dataplane_unit import udp4

    def params(p: SaParams) -> SaParams:
        if suite == "aes256-sha256":
            return dataclasses.replace(p, encr=EncrId.ENCR_AES_CBC, encr_key=p.encr_key[:32],
                                       integ=IntegId.AUTH_HMAC_SHA2_256_128, integ_key=bytes(32))
        return dataclasses.replace(p, esn=suite.endswith("-esn"))

    with gc_off():
        states = {}
        for side, nets in (("a", ("10.1.0.0/24", "10.2.0.0/24")), ("b", ("10.2.0.0/24", "10.1.0.0/24"))):
            sa_in, sa_out, pols = static_params(side, "192.0.2.1", "192.0.2.2", *nets, encap=True)
            st = states[side] = make_state()
            st.handle(m.InstallSa(REQID, params(sa_in), params(sa_out), tuple(pols), 1400, m.Lifetime(), id=11), 0.0)
            assert messages(st) == [m.Ack(11)]
        a, b = states["a"], states["b"]
        a.outbound(udp4("10.1.0.5", "10.2.0.5", b"x" * 100), 1.0)
        (esp,) = esp_out(a)
        inbound = b.sad.inbound[int.from_bytes(esp[:4], "big")]
        assert inbound.unprotect(esp)
        del inbound
        for st in (a, b):
            spis = tuple(st.sad.inbound)
            st.handle(m.DeleteSa(REQID, spis, id=12), 2.0)
            assert messages(st) == [m.Ack(12)] and not st.sad.inbound
        garbage = ipsecd_garbage()
        assert garbage == [], garbage


# --------------------------------------------------------------------------- the shell
def test_shell_records_of_a_closed_sa_are_freed() -> None:
    """The asyncio shell (installer, its data-plane jobs, outcome waiters) around a responder
    engine: once the peer deleted the IKE SA and the jobs ran, nothing of it is left."""
    import asyncio

    from tests.test_shell import A, B, FakeDataPlane, _exchange, _shell, _until

    async def main() -> None:
        dp = FakeDataPlane()
        shell, transport, installer = _shell(dp)
        watch = Watch(shell.manager)
        a = IkeManager([make_settings()], now=0.0)
        a.initiate("conn", 0.0)
        for _ in range(2):  # IKE_SA_INIT, IKE_AUTH (its response waits for the install)
            before = len(transport.sent)
            _exchange(a, shell, transport, lambda: 0.0)
            await _until(lambda n=before: len(transport.sent) > n)  # type: ignore[misc]
            a.receive_datagram(transport.sent[-1][0], A, B, 0.0)
        (ia,) = a.list_sas()
        (ib,) = shell.manager.list_sas()
        waiter = shell.outcome(ib.ike_sa_id)  # an `ipsecctl up` waiting (already established: never fires)
        assert ia.state == ib.state == IkeState.ESTABLISHED and installer.children
        del ia, ib
        a.delete_ike(a.list_sas()[0].ike_sa_id, 0.0)
        _exchange(a, shell, transport, lambda: 0.0)
        await _until(lambda: "delete" in dp.calls and not installer._last)
        assert shell.manager.list_sas() == [] and not installer.children
        del waiter
        leaks = watch.closed_alive()
        assert leaks == [] and watch.freed() == 1, leaks
        garbage = ipsecd_garbage()  # while the engines and the shell live (they are cycles of their own)
        assert garbage == [], garbage
        shell.close()

    with gc_off():
        asyncio.run(main())


def test_the_watch_sees_a_leak() -> None:
    """The check itself: an SA kept in a cycle on purpose is reported, with what holds it."""
    keep: list[object] = []

    def drive(pair: Pair) -> None:
        _up(pair)
        (sa,) = pair.a.list_sas()
        cycle: list[object] = [sa]
        cycle.append(cycle)
        pair.a.terminate("conn", pair.now)
        pair.run_until_quiet(30)
        keep.append(weakref.ref(sa))

    with gc_off():
        pair = make_pair()
        watch = Watch(pair.a, pair.b)
        drive(pair)
        leaks = watch.closed_alive()
        assert len(leaks) == 1 and "list" in leaks[0]
    gc.collect()
    assert keep[0]() is None  # ... and the collector still frees it (what GcPolicy's thaw is for)

