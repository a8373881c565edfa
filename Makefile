# ipsecd: `make demo` shows a tunnel, `make test` installs what it needs and runs every test.
SHELL := /bin/bash
VENV ?= .venv
# Debian's interpreter when there is one: a venv on it stays usable after `ipsecd --user` drops root
PYTHON ?= $(shell [ -x /usr/bin/python3 ] && echo /usr/bin/python3 || echo python3)
PY := $(VENV)/bin/python
APT_PACKAGES := strongswan-charon strongswan-swanctl libcharon-extra-plugins \
	libstrongswan-standard-plugins libstrongswan-extra-plugins \
	iproute2 iptables iputils-ping iperf3 tcpdump python3-venv procps
SYSDEPS_STAMP := $(VENV)/.sysdeps
PYDEPS_STAMP := $(VENV)/.pydeps
PYTEST_ARGS ?=
# --rekey adds packets lost across ~20 Child SA rekeys per pairing (about 5 more minutes)
BENCH_ARGS ?= --rekey
# make fuzz: seconds per fuzz target (codec, sk, responder, esp); crashes land in tests/fuzz/crashes/
FUZZ_SECONDS ?= 180
# make bench: the IKE_SA_INIT flood scenario (tests/bench_flood.py --help)
FLOOD_ARGS ?= --runs 3
FUZZ_ARGS ?=

.PHONY: all deps sysdeps pydeps test unit lint demo bench fuzz clean

all: test

# System packages: strongSwan is the interop peer, iproute2/iptables build the test networks.
$(SYSDEPS_STAMP):
	@if [ "$$(id -u)" = 0 ]; then \
		missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
		if [ -n "$$missing" ]; then \
			apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; \
		fi; \
	else echo "not root: skipping apt-get (namespace and interop tests will be skipped)"; fi
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

test: deps
	$(PY) -m pytest -q -ra $(PYTEST_ARGS)

unit: pydeps
	$(PY) -m pytest -q -m "not netns and not interop" $(PYTEST_ARGS)

lint: pydeps
	$(VENV)/bin/ruff check ipsecd tests
	$(VENV)/bin/mypy

demo: deps
	$(PY) -m ipsecd.demo

# wireguard-go is the second data-plane anchor of the benchmark (keys are made at run time, never kept)
bench: deps
	@if [ "$$(id -u)" = 0 ]; then for p in wireguard-go wireguard-tools; do dpkg -s $$p >/dev/null 2>&1 || \
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends wireguard-go wireguard-tools; done; fi
	$(PY) -m tests.bench $(BENCH_ARGS)
	$(PY) -m tests.bench_flood $(FLOOD_ARGS)

# Coverage-guided fuzzing (atheris); the corpora grow in .fuzz/ across runs
fuzz: pydeps
	$(PY) -m tests.fuzz.run --seconds $(FUZZ_SECONDS) $(FUZZ_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .fuzz
