# Everything a fresh Debian/Ubuntu machine needs, then the demo or the tests.
#   make demo   install, then `datamodels run configs/digits.yaml`
#   make test   install (with the test extras), then the test suite, Ray kept on loopback
#   make test-fast   the unit tests alone (no Ray, no FFCV files), on an existing install
#
# Everything Python goes into a virtual environment ($(VENV)): Debian 12's and Ubuntu 24.04's
# own python3 refuse `pip install` outside one (PEP 668, "externally-managed-environment").
PYTHON ?= python3
VENV ?= .venv
# A CPU build of torch; set TORCH_SPEC=torch to let pip pick the CUDA build on a GPU machine.
TORCH_SPEC ?= torch==2.13.0
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq
# FFCV compiles against libjpeg-turbo and OpenCV; python3-venv gives Debian's python3 `-m venv`;
# iproute2 and util-linux give `ip` and `unshare` for the loopback-only Ray tests.
SYSTEM_PACKAGES := libturbojpeg0-dev libopencv-dev pkg-config python3-venv iproute2 util-linux
# The report test renders the HTML page in a headless browser; the demo does not need one.
TEST_SYSTEM_PACKAGES := chromium
VPY := $(VENV)/bin/python

.PHONY: install install-test system-deps test-system-deps venv demo test test-fast

system-deps:
	$(SUDO) apt-get update -qq
	$(APT) $(SYSTEM_PACKAGES)

test-system-deps: system-deps
	$(APT) $(TEST_SYSTEM_PACKAGES)

venv:
	[ -x $(VPY) ] || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip

install: system-deps venv
	$(VPY) -m pip install -q "$(TORCH_SPEC)"
	$(VPY) -m pip install -q -e .
	@echo "installed into $(VENV): run '. $(VENV)/bin/activate' to put 'datamodels' on PATH"

install-test: test-system-deps venv
	$(VPY) -m pip install -q "$(TORCH_SPEC)"
	$(VPY) -m pip install -q -e ".[test]"

demo: install
	$(VENV)/bin/datamodels run configs/digits.yaml

test: install-test
	PATH="$(abspath $(VENV))/bin:$$PATH" scripts/loopback.sh $(VPY) -m pytest -q tests

# tests/conftest.py marks the tests that start Ray or touch FFCV files `integration`.
test-fast:
	PATH="$(abspath $(VENV))/bin:$$PATH" scripts/loopback.sh $(VPY) -m pytest -q -m "not integration" tests
