# One venv for everything; `make test` is the command the README and CI use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export MILLPOND_CACHE ?= $(CURDIR)/.cache

.PHONY: install typecheck lint browser test quickstart bench clean

$(BIN)/millpond: pyproject.toml setup.py $(wildcard core/*/*.c connectors/*/*.c)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[all,test]'
	# bytecode now, as pip does for a wheel: where PYTHONDONTWRITEBYTECODE is set, every start
	# would otherwise compile millpond's modules again (~0.3 s)
	$(BIN)/python -m compileall -q -j0 core connectors plugins
	touch $@

install: $(BIN)/millpond

# The second lane runs the core tests again on the pure-Python paths (the C speedups
# switched off), the paths an install without a C compiler runs; no server tests.
PURE_PYTHON_TESTS := tests/log tests/connectors/postgres/test_pgoutput.py tests/runtime tests/test_speedups.py \
	tests/audit/test_chain.py tests/audit/test_verify.py

# mypy --strict over the package as installed (core/ as millpond, connectors/ as millpond.connectors)
# and over the syslog plugin; see [tool.mypy] in pyproject.toml.
typecheck: install
	rm -rf build/typecheck && mkdir -p build/typecheck/millpond
	ln -s $(CURDIR)/core/* build/typecheck/millpond/
	ln -s $(CURDIR)/connectors build/typecheck/millpond/connectors
	$(BIN)/mypy

lint: install
	$(BIN)/ruff check .

# tests/api/test_ui.py drives the dashboard in Debian's headless Chromium; installed when missing
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	fi

test: typecheck lint browser
	$(BIN)/pytest
	MILLPOND_PURE_PYTHON=1 $(BIN)/pytest -q -m "not postgres and not cassandra and not kafka and not slow" \
		$(PURE_PYTHON_TESTS)

quickstart: install
	$(BIN)/millpond run configs/quickstart.yaml --until-idle

bench: install
	$(BIN)/python tests/benchmarks/bench_log.py --quick

clean:
	rm -rf $(VENV) build data out .pytest_cache .mypy_cache
