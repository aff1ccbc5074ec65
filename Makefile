# Two commands do all set-up on a fresh Debian machine: `make demo` and `make test`.
# As root, the Debian packages are installed first (fuse3 for fusermount3; git and rsync,
# which the tests run; systemd for systemd-socket-activate and systemd-analyze, pdsh for
# dshbak, both run by tests); then a .venv with ninefs in it. Nothing is compiled.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | sha1sum | cut -c1-12)
APT_PACKAGES := fuse3 git rsync systemd pdsh
# bench-cluster compares `ninefs cpu -w` with ssh fan-outs (pdsh, clush) over sshd.
BENCH_CLUSTER_PACKAGES := openssh-server pdsh clustershell
PYTEST_ARGS ?=

.PHONY: all demo test test-fast bench bench-mount bench-cluster lint format fuzz system-deps bench-cluster-deps clean

all: test

# $(call apt_install,PACKAGES): install those of PACKAGES that are missing (as root, with
# apt-get), or say which are missing and how to install them.
define apt_install
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "missing Debian packages:$$missing (run as root, or: sudo apt-get install$$missing)" >&2; exit 1; \
	  fi; \
	fi
endef

system-deps:
	$(call apt_install,$(APT_PACKAGES))

bench-cluster-deps:
	$(call apt_install,$(BENCH_CLUSTER_PACKAGES))

$(STAMP):
	@$(MAKE) --no-print-directory system-deps
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
	@echo "installing ninefs and its test dependencies into $(VENV)"
	@set -o pipefail; $(PY) -m pip install -q -e '.[test]' 2>&1 | grep -v '^WARNING: Location' || exit 1
	@rm -f $(VENV)/.installed-*; touch $@

demo: $(STAMP)
	@$(VENV)/bin/ninefs demo

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow and not fuse" $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/bench_9p.py

bench-mount: $(STAMP)
	$(PY) benchmarks/bench_mount.py

bench-cluster: $(STAMP) bench-cluster-deps
	$(PY) benchmarks/bench_cluster.py

# The hostile-traffic suites at length: random and malformed frames (hypothesis), and every
# attack of tests/test_hostile.py a thousand times over. About 5 minutes on two cores.
fuzz: $(STAMP)
	NINEFS_FUZZ_EXAMPLES=$${NINEFS_FUZZ_EXAMPLES:-1500} NINEFS_HOSTILE_ROUNDS=$${NINEFS_HOSTILE_ROUNDS:-1000} \
	  $(PY) -m pytest -q --timeout=0 tests/test_fuzz.py tests/test_hostile.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
