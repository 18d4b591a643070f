# Forest Carbon for QGIS. Every target is idempotent; a second `make setup` takes seconds.
SHELL := /bin/bash
SYSTEM_PYTHON := /usr/bin/python3
VENV := .venv
PYTHON := $(VENV)/bin/python
WORKER_VENV := .venv-worker
# the wheels the dependency installer takes on QGIS's own Python (tests/gui/test_installer.py serves them on 127.0.0.1)
WHEELHOUSE := .wheelhouse
CORE_SOURCES := $(shell find forest_carbon_plugin -name '*.py' -not -path '*/gui/*' 2>/dev/null)
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
DEB_PACKAGES := qgis python3-qgis qgis-providers python3-rasterio python3-geopandas python3-scipy python3-sklearn \
	python3-h5py python3-matplotlib python3-cryptography python3-venv python3-pip gdal-bin proj-data xvfb xauth zip unzip
# make test-lts: where the Debian 13 / QGIS 3.44 root is cached (outside the checkout, so CI's clones share it)
LTS_ROOT ?= /var/cache/forest-carbon-lts

export QT_QPA_PLATFORM := offscreen
export PROJ_DATA := /usr/share/proj
export XDG_RUNTIME_DIR ?= /tmp/runtime-$(shell id -u)

.PHONY: setup system-packages deb-packages test test-core test-lts demo package deploy bench clean

setup: system-packages $(VENV)/.installed $(WORKER_VENV)/.installed $(WHEELHOUSE)/plan.txt

# Debian's QGIS 3.22 and the geospatial stack; apt runs only when something is missing.
system-packages:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "Installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends $$missing; \
	else echo "Debian packages: all present"; fi

# A venv that sees Debian's PyQGIS, rasterio, geopandas, scipy and numpy, plus pinned pip packages.
# Debian's builds are pinned to the versions this Debian ships (scripts/pins.py system), so that nothing
# pip installs replaces them, on Debian 12 (Python 3.11, numpy 1.24) as on Debian 13 (3.13, numpy 2.2).
$(VENV)/.installed: requirements.txt Makefile scripts/pins.py
	@test -x $(PYTHON) || $(SYSTEM_PYTHON) -m venv --system-site-packages $(VENV)
	$(SYSTEM_PYTHON) scripts/pins.py system > $(VENV)/constraints.txt.tmp && mv $(VENV)/constraints.txt.tmp $(VENV)/constraints.txt
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -c $(VENV)/constraints.txt -r requirements.txt
	@mkdir -p $(XDG_RUNTIME_DIR) && chmod 700 $(XDG_RUNTIME_DIR)
	touch $@

# The client's versions of what a Dask worker runs, read from .venv (git-ignored: it differs per Debian).
# Rewritten only when a version changed, so that .venv-worker is not reinstalled for nothing.
constraints-worker.txt: $(VENV)/.installed scripts/pins.py
	@$(PYTHON) scripts/pins.py worker > $@.tmp
	@if cmp -s $@.tmp $@; then rm $@.tmp; else mv $@.tmp $@ && echo "wrote $@"; fi

# A Dask worker's environment: no QGIS, no PyQt, no system site-packages; only `pip install .[worker]`
# with the main venv's versions (constraints-worker.txt), so tiles computed there have the same bits.
# The package is installed from a copy of the sources (setuptools would write into build/, which
# `make package` uses); it is reinstalled when the core changes. tests/integration/test_remote.py runs its workers.
$(WORKER_VENV)/.installed: pyproject.toml constraints-worker.txt $(CORE_SOURCES)
	@test -x $(WORKER_VENV)/bin/python || $(SYSTEM_PYTHON) -m venv $(WORKER_VENV)
	@src=$$(mktemp -d) && trap 'rm -rf "$$src"' EXIT && \
	  cp -r pyproject.toml README.md LICENSE forest_carbon_plugin "$$src"/ && rm -rf "$$src"/forest_carbon_plugin/gui && \
	  find "$$src" -name __pycache__ -type d -prune -exec rm -rf {} + && \
	  $(WORKER_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -c constraints-worker.txt \
	    --force-reinstall --no-deps "$$src" && \
	  $(WORKER_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -c constraints-worker.txt "$$src[worker]"
	touch $@

# What Forest Carbon's "Install dependencies" would install into a profile of this machine's QGIS (its
# Python without .venv), downloaded once with pip's configured index: scripts/wheelhouse.py.
$(WHEELHOUSE)/plan.txt: forest_carbon_plugin/core/dependencies.py scripts/wheelhouse.py
	env -u PYTHONPATH $(SYSTEM_PYTHON) scripts/wheelhouse.py $(WHEELHOUSE)
	touch $@

test: setup
	@mkdir -p $(XDG_RUNTIME_DIR) && chmod 700 $(XDG_RUNTIME_DIR)
	$(PYTHON) -m pytest $(PYTEST_ARGS)

# The QGIS-free tests (tests/core and the layering test) in the Dask worker's environment: no QGIS, no PyQt,
# only `pip install .[worker]` plus pytest at .venv's pin; they import the checkout's sources (pythonpath = .).
# `make test` runs them too, in .venv.
$(WORKER_VENV)/.pytest: $(WORKER_VENV)/.installed requirements.txt
	$(WORKER_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -c constraints-worker.txt \
	  "$$(grep -E '^pytest==' requirements.txt)"
	touch $@

test-core: $(WORKER_VENV)/.pytest
	$(WORKER_VENV)/bin/python -m pytest -p no:qgis tests/core tests/test_layers.py $(PYTEST_ARGS)

# The whole suite on Debian 13 with QGIS 3.44 LTR, in a chroot built once with debootstrap (scripts/lts_root.sh)
test-lts:
	$(SUDO) env LTS_ROOT="$(LTS_ROOT)" LTS_MAKE="$(or $(LTS_MAKE),test)" PYTEST_ARGS="$(PYTEST_ARGS)" \
	  bash scripts/lts_root.sh

# the Debian packages make setup installs (scripts/lts_root.sh puts them into its root)
deb-packages:
	@echo $(DEB_PACKAGES)

demo: setup
	@mkdir -p $(XDG_RUNTIME_DIR) && chmod 700 $(XDG_RUNTIME_DIR)
	$(PYTHON) scripts/demo.py

package:
	$(SYSTEM_PYTHON) scripts/package.py

# QGIS_PROFILE_DIR defaults to ~/.local/share/QGIS/QGIS3/profiles/default
deploy:
	$(SYSTEM_PYTHON) scripts/deploy.py

bench: setup
	$(PYTHON) -m bench

clean:
	rm -rf dist build demo_output .pytest_cache $(WHEELHOUSE)
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
