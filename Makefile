# Everything a fresh Debian/Ubuntu machine needs, then the demo or the tests.
#   make demo   install, then `datamodels run configs/digits.yaml`
#   make test   install, then the test suite (Ray kept on loopback when we may make a namespace)
PYTHON ?= python3
# A CPU build of torch; set TORCH_SPEC=torch to let pip pick the CUDA build on a GPU machine.
TORCH_SPEC ?= torch==2.13.0
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install system-deps demo test

system-deps:
	# FFCV compiles against libjpeg-turbo and OpenCV; iproute2 gives `ip` for loopback-only tests.
	$(SUDO) apt-get update -qq
	$(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libturbojpeg0-dev libopencv-dev pkg-config iproute2 util-linux chromium

install: system-deps
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q "$(TORCH_SPEC)"
	$(PYTHON) -m pip install -q -e ".[test]"

demo: install
	datamodels run configs/digits.yaml

test: install
	scripts/loopback.sh $(PYTHON) -m pytest -q tests
