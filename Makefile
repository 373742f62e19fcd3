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

# The second lane runs the core tests again on the pure-Python paths (the C speedups
# switched off), the paths an install without a C compiler runs; no server tests.
PURE_PYTHON_TESTS := tests/log tests/connectors/postgres/test_pgoutput.py tests/runtime tests/test_speedups.py

test: install
	$(BIN)/mypy
	$(BIN)/pytest
	MILLPOND_PURE_PYTHON=1 $(BIN)/pytest -q -m "not postgres and not cassandra and not kafka and not slow" \
		$(PURE_PYTHON_TESTS)

quickstart: install
	$(BIN)/millpond run configs/quickstart.yaml --until-idle

bench: install
	$(BIN)/python tests/benchmarks/bench_log.py --quick

clean:
	rm -rf $(VENV) data out .pytest_cache .mypy_cache
