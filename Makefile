# Two commands matter: `make demo` and `make test`. Both install what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test demo bench lint deps venv clean recording-rules

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

## Debian's prometheus and prometheus-pushgateway (real servers for tests and the demo)
deps:
	@bash hack/install-deps.sh

## The whole test suite (starts real Prometheus/Pushgateway servers on loopback)
test: venv deps
	$(BIN)/python -m pytest
	$(BIN)/ruff check extender tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

## The self-contained demo: emulated nodes -> real Prometheus -> extender -> recorded requests
demo: venv deps
	$(BIN)/extender demo

## Benchmarks: refresh benchmarks/RESULTS.md
bench: venv deps
	@bash hack/install-bench-deps.sh
	$(BIN)/python -m benchmarks.run_all

## The shipped recording rules, generated from config/ (a test checks they are up to date)
recording-rules: venv
	$(BIN)/extender recording-rules --config config/extender.yaml --out config/recording-rules.yaml
	$(BIN)/extender recording-rules --config config/extender.yaml --format prometheusrule \
		--out manifests/components/monitoring/recording-rules.yaml

lint: venv
	$(BIN)/ruff check extender tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis out .demo
