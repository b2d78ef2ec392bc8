# Two set-up commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: install chromium demo test test-asyncio test-trio lint bench clean mcp-conformance screenshots

$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	touch $@

$(VENV)/.installed-base: $(VENV)/.created pyproject.toml
	$(PIP) install -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.created pyproject.toml
	$(PIP) install -e '.[dev]'
	touch $@ $(VENV)/.installed-base

# The benchmarks' peer (the Agent Framework's hosting helpers), on top of the dev extra.
$(VENV)/.installed-bench: $(VENV)/.installed-dev pyproject.toml
	$(PIP) install -e '.[dev,bench]'
	touch $@

# The Vercel AI SDK and a Node 22 for its test (skipped when npm is missing or offline).
VERCEL := tests/channels/responses/vercel
$(VERCEL)/node_modules/.installed: $(VERCEL)/package-lock.json
	@if command -v npm >/dev/null 2>&1 && npm ci --prefix $(VERCEL) --no-audit --no-fund \
		--loglevel=error; then touch $@; \
	else echo "npm ci failed or npm is missing: the Vercel AI SDK test will be skipped"; fi

# The MCP conformance kit, run against the MCP channel by the suite.
MCP_CONFORMANCE := .mcp-conformance/node_modules/.installed
$(MCP_CONFORMANCE):
	npm install --no-audit --no-fund --loglevel=error --prefix .mcp-conformance \
		@modelcontextprotocol/conformance@0.1.13 && touch $@

# Headless Chromium for the console's browser tests (Debian's package). Where it cannot be
# installed the browser tests skip on a developer's machine and fail under CI (CI=true).
chromium:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
		|| echo "apt-get could not install chromium: the console's browser tests need it"; \
	else echo "chromium is missing: install Debian's chromium package for the browser tests"; fi

install: $(VENV)/.installed-dev $(VERCEL)/node_modules/.installed $(MCP_CONFORMANCE) chromium

demo: $(VENV)/.installed-base
	$(VENV)/bin/agenthost demo --host 127.0.0.1 --port $${PORT:-8000}

# The whole suite, once under asyncio and once under trio. The PostgreSQL cases (the store
# contract, migrations, several replicas) and `make bench`'s postgres_store rows use this
# server; each run makes and drops its own schemas. Point it elsewhere with
# `make test AGENTHOST_TEST_POSTGRES=...`.
AGENTHOST_TEST_POSTGRES ?= postgresql://postgres@127.0.0.1:5432/test
export AGENTHOST_TEST_POSTGRES

test: install lint test-asyncio test-trio

test-asyncio: install
	AGENTHOST_TEST_BACKEND=asyncio $(PY) -m pytest -q

test-trio: install
	AGENTHOST_TEST_BACKEND=trio $(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check agenthost tests benchmarks docs samples
	$(VENV)/bin/ruff format --check agenthost tests benchmarks docs samples
	$(VENV)/bin/mypy

bench: $(VENV)/.installed-bench
	$(PY) -m benchmarks

# The MCP conformance suite (Node): its server scenarios then run with the MCP channel's tests.
# 0.1.13 is the last release that runs on Node 20.
# Refresh the console's screenshots in docs/screenshots (the browser tests, saving there).
screenshots: install
	AGENTHOST_UPDATE_SCREENSHOTS=1 AGENTHOST_TEST_BACKEND=asyncio $(PY) -m pytest -q tests/channels/console/test_console_browser.py

mcp-conformance: $(MCP_CONFORMANCE)

clean:
	rm -rf $(VENV) .agenthost build dist *.egg-info
