# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
FASHION_DIR := /usr/share/datasets/fashion-mnist

.PHONY: demo demo-figures test install fashion-data clean

install: $(STAMP)

# torch first and alone: pip then takes the CPU wheel from local disk instead of a CUDA build.
# Not -q: the install takes about a minute, and pip's progress shows that it is working.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --progress-bar on --upgrade pip
	$(PY) -m pip install --progress-bar on torch==2.13.0
	$(PY) -m pip install --progress-bar on -e '.[test,export,ray]'
	touch $(STAMP)

# Fashion-MNIST comes from Debian when apt is available; otherwise the demo downloads it (checksummed).
fashion-data:
	@if [ ! -f $(FASHION_DIR)/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
		(apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1) || \
		echo "apt could not install dataset-fashion-mnist; the demo will download Fashion-MNIST"; \
	fi

demo: $(STAMP) fashion-data
	$(VENV)/bin/crossdistill demo
	@echo "The crossdistill command is in $(VENV)/bin: run it as $(VENV)/bin/crossdistill, or first"
	@echo "  source $(VENV)/bin/activate"

# README quotes the demo's figures; a test compares them with this file. Refresh it after
# `make demo` when the demo's results change on purpose, then update README to match.
demo-figures: $(STAMP)
	$(PY) -m crossdistill.demo.figures crossdistill-demo/report.json tests/data/demo_figures.json

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
