"""Interop tests: strongSwan (charon with kernel-libipsec) against itself and against ipsecd, in namespaces."""
