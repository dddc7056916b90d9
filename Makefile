# The two commands of the README, plus the pieces they are made of.
#   make sandbox   the main job: local Kafka, emulators of Graph and BC, the whole pipeline
#   make test      ruff, mypy, the layers contract (import-linter) and the whole test suite
#   make lock      regenerate deploy/requirements.lock (the image's pinned dependencies, hashed)
# Both create .venv and install the project the first time (and again when pyproject changes).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: sandbox test lint lock install bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Python 3.11 or newer is needed (set PYTHON=/path/to/python3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[sandbox,dev]'  # the emulators' and the tests' needs too
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
	$(BIN)/lint-imports --no-cache
	$(BIN)/python deploy/validate.py

# The image's dependencies, pinned with hashes from pyproject.toml with the extras the image
# carries (IMAGE_EXTRAS in deploy/validate.py), resolved on this Python (3.11, like the image).
# `make lock ARGS=--upgrade` moves every pin to the newest allowed.
lock: $(STAMP)
	CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile --quiet --generate-hashes \
		--strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links --extra otel \
		--output-file deploy/requirements.lock $(ARGS) pyproject.toml

test: lint
	bash tests/run.sh $(ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench $(ARGS)

clean:
	rm -rf $(VENV) .contactsync .mypy_cache .ruff_cache .pytest_cache
