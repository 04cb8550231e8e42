# qubes-logvm: the one place that knows commands and install paths.
#
#   make test    every test (installs what it needs: Debian packages, .venv)
#   make demo    the main job, end to end
#   make bench   the benchmark (figures next to baselines from the same run)

SHELL := /bin/bash
PYTHON_SYS ?= /usr/bin/python3
VENV := .venv
VPY := $(VENV)/bin/python
PYTEST_ARGS ?=

# Debian packages: runtime dependencies (as the products use them) and the
# real tools the tests drive.
APT_RUNTIME := python3 python3-venv python3-systemd python3-yaml python3-zstandard
APT_TEST := systemd zstd util-linux rsyslog procps
APT_BUILD := rpm debhelper dpkg-dev fakeroot lintian
APT_PACKAGES := $(APT_RUNTIME) $(APT_TEST) $(APT_BUILD)

.PHONY: all deps venv lint typecheck pytest test demo bench clean

all: test

deps: $(VENV)/.deps-stamp
$(VENV)/.deps-stamp: Makefile
	./scripts/install-deps $(APT_PACKAGES)
	@mkdir -p $(VENV) && touch $@

# The venv sees the distro's python3-systemd/yaml/zstandard exactly as the
# installed product will; test tools go into the venv only.
venv: $(VENV)/.venv-stamp
$(VENV)/.venv-stamp: $(VENV)/.deps-stamp requirements-dev.txt python/pyproject.toml
	$(PYTHON_SYS) -m venv --system-site-packages $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -r requirements-dev.txt
	$(VPY) -m pip install -q --no-deps -e python
	touch $@

lint: venv
	$(VENV)/bin/ruff check python tests bench
	$(VENV)/bin/ruff format --check python tests bench

typecheck: venv
	$(VENV)/bin/mypy

pytest: venv
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

demo: venv
	$(VPY) -m demo.run

bench: venv
	$(VPY) -m bench.run

clean:
	rm -rf $(VENV) build dist .mypy_cache .ruff_cache .pytest_cache
