# Two commands do all set-up on a fresh machine:  `make run` (the main job)  and  `make test` (the tests).
# Both create the virtual environment in .venv first (torch 2.13.0 CPU comes from the local wheel).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test venv clean browser

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

venv: $(BIN)/.installed

run: $(BIN)/.installed
	$(BIN)/trojanbench run

# Browser tests drive Debian's Chromium through playwright (never a downloaded browser). Installed here when
# missing and we may (root); elsewhere those tests skip, unless TROJANBENCH_REQUIRE_BROWSER=1 (CI) makes them fail.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }; } \
	  || echo "note: Chromium is not installed; browser tests will skip"; }

# pytest's exit code 5 (no tests collected) is a failure here, like any other non-zero code.
test: $(BIN)/.installed browser
	$(BIN)/python -m pytest -n 2 --durations=15 $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "no tests were collected: that is a failure"; fi; exit $$rc

clean:
	rm -rf $(VENV) runs .pytest_cache
