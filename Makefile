# Two commands on a fresh machine: `make study` and `make test`. Both set up first.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
KERNEL := $(VENV)/share/jupyter/kernels/umt-study/kernel.json
# Debian packages: the synthesizer, two General MIDI soundfonts, a browser for the UI test.
APT_PACKAGES := fluidsynth fluid-soundfont-gm timgm6mb-soundfont chromium
# The default study: the WaveNet model (cpu) and the spectral ablation side by side.
PRESET ?= cpu cpu-spectral
PYTEST_ARGS ?=

.PHONY: setup system-packages test study lab bench clean-venv

setup: system-packages $(STAMP) $(KERNEL)

system-packages:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "Installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else \
	    echo "Missing system packages:$$missing"; \
	    echo "Install them with: sudo apt-get install --no-install-recommends$$missing"; \
	    echo "(chromium is only needed by the browser test, which is skipped without it)"; \
	    case "$$missing" in *fluidsynth*|*soundfont*) exit 1;; esac; \
	  fi; \
	fi

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

$(KERNEL): $(STAMP)
	$(PY) -m ipykernel install --sys-prefix --name umt-study --display-name "UMT study (umt_core)" >/dev/null
	@echo "Registered Jupyter kernel umt-study"

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

study: setup
	$(PY) -m umt_core study $(addprefix --preset ,$(PRESET))

lab: setup
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks

# The three benchmarks on the paper configuration; each measures its baseline in the same run.
bench: setup
	$(PY) -m umt_core bench train --preset paper --batch 2 --segment 12000 --repeats 3
	$(PY) -m umt_core bench generate --preset paper --batch 1 8 32
	$(PY) -m umt_core bench translate --preset paper --seconds 60

clean-venv:
	rm -rf $(VENV)
