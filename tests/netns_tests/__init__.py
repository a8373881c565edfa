"""Tests that run two ipsecd daemons against each other in network namespaces."""
