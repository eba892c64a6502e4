# Two commands do all set-up on a fresh machine:  `make run` (the main job)  and  `make test` (the tests).
# Both create the virtual environment in .venv first (torch 2.13.0 CPU comes from the local wheel).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test venv clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

venv: $(BIN)/.installed

run: $(BIN)/.installed
	$(BIN)/trojanbench run

# pytest's exit code 5 (no tests collected) is a failure here, like any other non-zero code.
test: $(BIN)/.installed
	$(BIN)/python -m pytest -n 2 --durations=15 $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "no tests were collected: that is a failure"; fi; exit $$rc

clean:
	rm -rf $(VENV) runs .pytest_cache
