# Two commands on a fresh machine: `make demo` (the whole flow end to end) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export GX_ANALYTICS_ENABLED := false

.PHONY: install browser demo test lint format compile stop clean

install: $(VENV)/.installed browser

# The tests open the pages people look at (Data Docs) in a real headless browser: Debian's chromium.
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  (DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null \
	   || (apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null))

# Exact versions from requirements.lock (torch==2.13.0+cpu is the CPU wheel), then the project itself.
$(VENV)/.installed: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

demo: install
	$(BIN)/hap demo

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

compile: install
	$(BIN)/python -c "from components.pipeline import compile_pipeline; print(compile_pipeline())"

stop: install
	$(BIN)/hap serve stop

clean:
	-$(BIN)/hap serve stop
	rm -rf .hap
