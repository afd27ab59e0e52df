# Two commands for a newcomer (as root):  make demo   and   make test
VENV    ?= .venv
PY      := $(VENV)/bin/python
PYTEST  := $(VENV)/bin/pytest
STAMP   := $(VENV)/.installed

.PHONY: setup provision demo test test-unit test-host test-faults test-vm bench clean

setup: provision $(STAMP)

provision:
	@bash vagrant/provision.sh

# bcc comes from Debian's python3-bpfcc, so the venv sees system site-packages.
$(STAMP): pyproject.toml | provision
	@test -x $(PY) || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	@touch $@

demo: setup
	$(VENV)/bin/cnitrace doctor
	$(VENV)/bin/cnitrace demo --html cnitrace-demo.html --json cnitrace-demo.json

# All tiers (unit, host, the fault matrix, vm); a tier that skips or does not run fails the
# build (CNITRACE_STRICT_TIERS).
test: setup
	CNITRACE_STRICT_TIERS=1 $(PYTEST) tests/unit tests/host tests/faults
	CNITRACE_STRICT_TIERS=1 $(PY) -m cnitrace.vagrant.microvm --timeout 1500 -- $(abspath $(PYTEST)) -p no:cacheprovider --color=no $(abspath tests/vm)

test-unit: setup
	$(PYTEST) tests/unit

test-host: setup
	$(PYTEST) tests/host

test-faults: setup
	$(PYTEST) tests/faults

test-vm: setup
	$(PY) -m cnitrace.vagrant.microvm -- $(abspath $(PYTEST)) -p no:cacheprovider $(abspath tests/vm)

bench: setup
	$(PY) -m tests.bench

clean:
	rm -rf $(VENV) *.egg-info
