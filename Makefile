# One venv for everything; `make test` is the command the README and CI use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export MILLPOND_CACHE ?= $(CURDIR)/.cache

.PHONY: install test quickstart bench mypy clean

$(BIN)/millpond: pyproject.toml setup.py $(wildcard core/*/*.c connectors/*/*.c)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[all,test]'
	touch $@

install: $(BIN)/millpond

test: install
	$(BIN)/mypy
	$(BIN)/pytest

quickstart: install
	$(BIN)/millpond run configs/quickstart.yaml --until-idle

bench: install
	$(BIN)/python tests/benchmarks/bench_log.py --quick

clean:
	rm -rf $(VENV) data out .pytest_cache .mypy_cache
