# Forest Carbon for QGIS. Every target is idempotent; a second `make setup` takes seconds.
SHELL := /bin/bash
SYSTEM_PYTHON := /usr/bin/python3
VENV := .venv
PYTHON := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
DEB_PACKAGES := qgis python3-qgis qgis-providers python3-rasterio python3-geopandas python3-scipy python3-sklearn \
	python3-h5py python3-matplotlib python3-venv python3-pip gdal-bin proj-data xvfb zip unzip

export QT_QPA_PLATFORM := offscreen
export PROJ_DATA := /usr/share/proj
export XDG_RUNTIME_DIR ?= /tmp/runtime-$(shell id -u)

.PHONY: setup system-packages test demo package deploy bench clean

setup: system-packages $(VENV)/.installed

# Debian's QGIS 3.22 and the geospatial stack; apt runs only when something is missing.
system-packages:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "Installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends $$missing; \
	else echo "Debian packages: all present"; fi

# A venv that sees Debian's PyQGIS, rasterio, geopandas, scipy and numpy, plus pinned pip
# packages. numpy is pinned to Debian's version so that nothing pip installs replaces it.
$(VENV)/.installed: requirements.txt Makefile
	@test -x $(PYTHON) || $(SYSTEM_PYTHON) -m venv --system-site-packages $(VENV)
	$(SYSTEM_PYTHON) -c 'import numpy; print("numpy==" + numpy.__version__)' > $(VENV)/constraints.txt
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -c $(VENV)/constraints.txt -r requirements.txt
	@mkdir -p $(XDG_RUNTIME_DIR) && chmod 700 $(XDG_RUNTIME_DIR)
	touch $@

test: setup
	@mkdir -p $(XDG_RUNTIME_DIR) && chmod 700 $(XDG_RUNTIME_DIR)
	$(PYTHON) -m pytest $(PYTEST_ARGS)

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
	rm -rf dist build demo_output .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
