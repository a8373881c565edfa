"""EAP for IKE_AUTH (RFC 7296 2.16): packet codec, method state machines, RADIUS pass-through.

Modules: :mod:`.packet` (RFC 3748 codec), :mod:`.method` (the method API: steps,
failure reasons, secrets), :mod:`.session` (one conversation per side: Identity stage,
eap-dynamic selection, Nak), :mod:`.mschapv2`, :mod:`.tls` (EAP-TLS over pyOpenSSL),
:mod:`.radius` (sans-I/O RADIUS client), :mod:`.radius_method` (EAP-RADIUS relay),
:mod:`.radius_io` (the asyncio adapter, the only module here doing I/O).

Driving it from IKE_AUTH
========================

Gateway (responder; the ``ike_auth`` task, process_r/build_r):

1. IKE_AUTH request 1 arrives with IDi and no AUTH (and maybe N(EAP_ONLY_AUTHENTICATION),
   RFC 5998, from macOS/iOS).  Pick the peer config whose remote auth is EAP and build::

       offers = [MethodOffer(EapType.MSCHAPV2, lambda ident: MschapV2Authenticator(ident, lookup)),
                 MethodOffer(EapType.TLS, lambda ident: EapTlsServer(ident, creds))]      # eap-dynamic order
       # or, for auth = eap-radius: [MethodOffer(EAP_RADIUS, lambda ident: EapRadiusRelay(
       #     ident, calling_station_id=f"{peer_ip}[{peer_port}]", called_station_id=f"{our_ip}[{our_port}]"))]
       eap = EapAuthenticator(offers, identity=None if eap_id == "%any" else eap_id)
       step = eap.start()

   ``identity=None`` asks EAP-Identity first (Windows' IDi is its IP address).  The
   response carries IDr, CERT and AUTH (our certificate signature, RFC 7296 2.16: the
   gateway authenticates itself with a certificate unless EAP_ONLY_AUTHENTICATION was
   announced and the method is mutual) and an EAP payload with ``step.packet.encode()``.
2. Each following IKE_AUTH request carries one EAP payload: ``step = eap.process(eap_payload_data)``.
3. Act on the step type:

   * ``Send(packet, delay)``: answer with an EAP payload ``packet.encode()``; when
     ``delay`` > 0 hold the response that long (a timer in the IKE SA, not a sleep).
   * ``Pending(request)``: answer nothing yet.  The shell fulfils ``request`` (an
     ``AccessRequest``: ``await radius_io.access(request)``) and feeds the result to
     ``eap.resume(answer)``, then continues with the new step as in 3.  An event such
     as ``EapPending(ike_sa, request)`` / an ``eap_answer(ike_sa, answer)`` call on the
     IKE SA fits the existing event seam; a retransmitted IKE request meanwhile is
     simply dropped (the response is not built yet).
   * ``Success(msk, ...)``: send ``final`` (EAP-Success) in the EAP payload and keep
     ``msk``.  The next request carries the client's AUTH: verify it with
     ``verify_psk_auth(prf, msk, signed_octets_of_initiator, auth)`` (keymat: the MSK
     takes the place of the shared secret, AUTH = prf(prf(MSK, "Key Pad for IKEv2"),
     <signed octets>)), answer with our AUTH = ``psk_auth_data(prf, msk, our_octets)``
     plus SA/TSi/TSr/CP.  ``success.identity`` is the authenticated EAP identity
     (authorization, pools, RADIUS accounting); ``success.extra`` the ``RadiusAnswer``
     (Framed-IP-Address for the CP reply, Class and Session-Timeout for accounting).
   * ``Failure(reason, message, ...)``: send ``final`` (EAP-Failure) in the EAP payload
     and then fail the IKE SA with AUTHENTICATION_FAILED; log ``message`` (log-safe) and
     count ``reason``.

   An MSK shorter than 64 octets (RADIUS: 32) is used as it is; HMAC PRFs make the
   32-octet and zero-padded 64-octet forms equal, which is how strongSwan clients with a
   local MSCHAPv2 MSK and gateways behind RADIUS agree.  AES-XCBC/CMAC PRFs with EAP
   need a 16-octet key: RFC 7296 2.16 says to use the first octets; not needed today.

4. RADIUS accounting: on Child SA / IKE SA up send ``AccountingRecord(START, session_id,
   identity, framed_ip=vip, classes=answer.classes, ...)`` via ``radius_io.account``;
   every ``Acct-Interim-Interval`` an INTERIM_UPDATE with the data-plane counters; on
   delete a STOP with counters, session time and ``AcctTerminateCause``.

Road-warrior client (initiator; ipsecd as a client with ``auth = eap-*``):

1. IKE_AUTH request 1 without AUTH (RFC 7296 2.16) and with N(EAP_ONLY_AUTHENTICATION)
   if configured.  ``peer = EapPeer(eap_identity, [(EapType.MSCHAPV2, lambda i:
   MschapV2Peer(i, secret)), (EapType.TLS, lambda i: EapTlsPeer(i, creds))])``.
2. Every response with an EAP payload: ``step = peer.process(data)``.  ``Send`` -> next
   IKE_AUTH request with that EAP payload; ``Success`` (on EAP-Success) -> the next
   request carries AUTH = ``psk_auth_data(prf, success.msk, octets)``; verify the
   gateway's AUTH in its response the same way; ``Failure`` -> abort the IKE SA and log.

Threading and blocking: nothing here blocks or sleeps; EAP-TLS does its crypto inline,
like the IKE D-H (measured here: 3.6-5.2 ms of CPU for a whole in-process EAP-TLS 1.3
round trip, both sides, P-256 certificates, including session setup).
"""
