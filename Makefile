# The two commands of the README, plus the pieces they are made of.
#   make sandbox   the main job: local Kafka, emulators of Graph and BC, the whole pipeline
#   make test      ruff, mypy and the whole test suite (real Kafka broker, SQLite, PostgreSQL)
# Both create .venv and install the project the first time (and again when pyproject changes).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: sandbox test lint install bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Python 3.11 or newer is needed (set PYTHON=/path/to/python3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# The sandbox and the benchmarks keep their state (SQLite, the local broker's data) in the
# checkout, not in the user's state directory (the default of an installed contactsync).
sandbox bench: export CONTACTSYNC_STATE_DIR ?= $(CURDIR)/.contactsync

sandbox: $(STAMP)
	$(BIN)/contactsync sandbox $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint
	bash tests/run.sh $(ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench $(ARGS)

clean:
	rm -rf $(VENV) .contactsync .mypy_cache .ruff_cache .pytest_cache
