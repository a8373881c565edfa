# ipsecd: `make demo` shows a tunnel, `make test` installs what it needs and runs every test.
SHELL := /bin/bash
VENV ?= .venv
# Debian's interpreter when there is one: a venv on it stays usable after `ipsecd --user` drops root
PYTHON ?= $(shell [ -x /usr/bin/python3 ] && echo /usr/bin/python3 || echo python3)
PY := $(VENV)/bin/python
APT_PACKAGES := strongswan-charon strongswan-swanctl strongswan-pki libcharon-extra-plugins libcharon-extauth-plugins \
	libstrongswan-standard-plugins libstrongswan-extra-plugins \
	iproute2 iptables iputils-ping iperf3 tcpdump python3-venv procps tshark openssl \
	freeradius freeradius-utils \
	gcc make pkg-config libssl-dev libgmp-dev perl bzip2 debian-archive-keyring util-linux
# tshark asks whether non-root users may capture: answer no (the tests only read pcap files), so apt never prompts
DEBCONF_SELECTIONS := wireshark-common wireshark-common/install-setuid boolean false
SYSDEPS_STAMP := $(VENV)/.sysdeps
PYDEPS_STAMP := $(VENV)/.pydeps
PYTEST_ARGS ?=
# tunnel throughput (tests/bench.py): 5 interleaved runs per setup, min/median/max, idle share per run
BENCH_ARGS ?= --runs 5 --seconds 10
# packets lost across ~20 Child SA rekeys per pairing (about 5 more minutes); empty to skip
REKEY_ARGS ?= --rekey
# handshake load (tests/bench_handshake.py): each responder run is capped at --max-seconds; after the
# closed-loop checkpoints, 2,000 SAs opened at 300/s and 2,000 at 500/s (open loop: p50/p99 at the same
# offered load); --capture adds the responder's own request -> answer time (tcpdump on its side)
HANDSHAKE_ARGS ?= --runs 3 --tunnels 1000,5000,10000,20000 --max-seconds 600 --rate 300,500 --rate-sas 2000 --capture
# in-process CPU per IKE_SA_INIT + IKE_AUTH of the responder engine (tests/bench_engine.py)
ENGINE_ARGS ?= --handshakes 2000 --rounds 5
# the same with certificate logins (RSA-3072 chains checked, RFC 7427 signatures both ways)
HANDSHAKE_CERT_ARGS ?= --auth pubkey --runs 3 --tunnels 1000,5000 --max-seconds 600
# one IKE process against two (settings.ike_shards: 2; shard 1 on the initiator's core), charon as the yardstick
SHARDS_ARGS ?= --responders ipsecd,ipsecd-2shards,strongswan --runs 3 --tunnels 1000,5000 --max-seconds 600
# CPU per INITIAL_CONTACT/unique claim sent to another IKE shard, both ends in-process (tests/bench_xshard.py)
XSHARD_ARGS ?= --claims 5000 --rounds 5 --holding 2000
# the same with nothing pinned: every responder and the generator share both cores (issue 11's "same cores")
SHARDS_SHARED_ARGS ?= --placement shared --responders ipsecd,ipsecd-2shards,strongswan --runs 3 --tunnels 1000,5000 \
	--max-seconds 600
# bytes per tunnel in-process (tests/bench_memory.py): RSS and tracemalloc per line, IKE engine and worker state
MEMORY_ARGS ?= --tunnels 5000
# what closed IKE SAs leave to the cyclic GC (0 objects: freed by reference counting), CPU per SA churned (tests/bench_gc.py)
GC_ARGS ?= --sas 2000 --rounds 5
LOADTESTER := build/loadtester/libstrongswan-load-tester.so
# make fuzz: seconds per fuzz target (codec, sk, responder, esp, ah); crashes land in tests/fuzz/crashes/
FUZZ_SECONDS ?= 180
# make bench: the IKE_SA_INIT flood scenario (tests/bench_flood.py --help)
FLOOD_ARGS ?= --runs 3
# make bench: SIGTERM with this many SAs held must stop in bounded time (make test: 500)
SHUTDOWN_SAS ?= 5000
FUZZ_ARGS ?=

.PHONY: all deps sysdeps pydeps loadtester test unit lint demo bench fuzz clean

all: test

# System packages: strongSwan is the interop peer, iproute2/iptables build the test networks,
# tshark checks the Wireshark key export; strongswan-pki (pki --verify) and openssl judge our
# certificate validation and signatures; FreeRADIUS is the RADIUS server of the EAP namespace
# tests. Re-checked when this file (APT_PACKAGES) changes.
$(SYSDEPS_STAMP): Makefile
	@if [ "$$(id -u)" = 0 ]; then \
		missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
		if [ -n "$$missing" ]; then \
			echo "$(DEBCONF_SELECTIONS)" | debconf-set-selections && \
			apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; \
		fi; \
	else echo "not root: skipping apt-get (namespace, interop and tshark tests will be skipped)"; fi
	@mkdir -p $(VENV) && touch $@

$(PY): | $(SYSDEPS_STAMP)
	$(PYTHON) -m venv $(VENV)

$(PYDEPS_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

sysdeps: $(SYSDEPS_STAMP)
pydeps: $(PYDEPS_STAMP)
deps: sysdeps pydeps

# strongSwan's load-tester plugin, built from the Debian archive's 5.9.8 source (not committed;
# the script is idempotent and keeps its cache in build/loadtester)
loadtester: sysdeps
	@if [ "$$(id -u)" = 0 ] || [ -f $(LOADTESTER) ]; then bash tests/loadtester/build.sh >/dev/null; \
	else echo "not root: skipping the load-tester build (the handshake load test will build it)"; fi

# As root (CI), a test skipped because something is missing fails the run (tests/strict_skips.py):
# everything a test needs is installed above, so such a skip is a bug, not a shrug.
test: deps loadtester
	IPSECD_STRICT_SKIPS=$$([ "$$(id -u)" = 0 ] && echo 1 || echo 0) $(PY) -m pytest -q -ra $(PYTEST_ARGS)

unit: pydeps
	$(PY) -m pytest -q -m "not netns and not interop" $(PYTEST_ARGS)

lint: pydeps
	$(VENV)/bin/ruff check ipsecd tests
	$(VENV)/bin/mypy

demo: deps
	$(PY) -m ipsecd.demo

# wireguard-go is the second data-plane anchor of the benchmark (keys are made at run time, never kept)
bench: deps loadtester
	@if [ "$$(id -u)" = 0 ]; then for p in wireguard-go wireguard-tools; do dpkg -s $$p >/dev/null 2>&1 || \
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends wireguard-go wireguard-tools; done; fi
	$(PY) -m tests.bench $(BENCH_ARGS)
	$(PY) -m tests.bench_offload
	$(if $(REKEY_ARGS),$(PY) -m tests.bench $(REKEY_ARGS))
	$(PY) -m tests.bench_engine $(ENGINE_ARGS)
	$(PY) -m tests.bench_handshake $(HANDSHAKE_ARGS)
	$(PY) -m tests.bench_handshake $(HANDSHAKE_CERT_ARGS)
	$(PY) -m tests.bench_handshake $(SHARDS_ARGS)
	$(PY) -m tests.bench_handshake $(SHARDS_SHARED_ARGS)
	$(PY) -m tests.bench_xshard $(XSHARD_ARGS)
	$(PY) -m tests.bench_memory $(MEMORY_ARGS)
	$(PY) -m tests.bench_gc $(GC_ARGS)
	$(PY) -m tests.bench_flood $(FLOOD_ARGS)
	$(PY) -m tests.bench_heard
	$(PY) -m tests.bench_scrape
	IPSECD_SHUTDOWN_SAS=$(SHUTDOWN_SAS) $(PY) -m pytest -q -s tests/interop/test_shutdown_load.py
	IPSECD_SOAK=1 $(PY) -m pytest -q tests/hostile/test_lossy_netns.py::test_ike_sa_lifetime_under_random_loss \
		tests/netns_tests/test_lifecycle_two_ipsecd.py::test_child_rekey_under_load

# Coverage-guided fuzzing (atheris); the corpora grow in .fuzz/ across runs
fuzz: pydeps
	$(PY) -m tests.fuzz.run --seconds $(FUZZ_SECONDS) $(FUZZ_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .fuzz
