"""IKEv2 (RFC 7296): wire codec, crypto, proposals and the sans-I/O IKE SA."""
