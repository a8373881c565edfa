"""The control socket (JSON over a Unix socket) and its client, ipsecctl."""
