"""EAP for IKE_AUTH (RFC 7296 2.16): packet codec, method state machines, RADIUS pass-through.

Everything here is sans-I/O except :mod:`ipsecd.eap.radius_io`.  See
:mod:`ipsecd.eap.method` for the method API and :mod:`ipsecd.eap.session` for the
per-side conversation objects the IKE_AUTH task drives.
"""
