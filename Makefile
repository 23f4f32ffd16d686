# Two commands matter: `make demo` and `make test`. Each builds .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv test lint docs demo bench fuzz harden clean

venv: $(STAMP)

# pip's chatter goes to .venv/install.log; it is shown only if the install fails.
$(STAMP): pyproject.toml demo-app/requirements.txt
	@echo "setting up $(VENV) (first run, or pyproject.toml changed); log in $(VENV)/install.log"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@{ $(BIN)/python -m pip install --upgrade pip && \
	   $(BIN)/python -m pip install -e '.[test]' -r demo-app/requirements.txt; } > $(VENV)/install.log 2>&1 \
	   || { cat $(VENV)/install.log; echo "pip install failed (log above)"; exit 1; }
	@touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check gitsync webhook
	$(BIN)/mypy

docs: $(STAMP)
	$(BIN)/python -m gitsync.reference

demo: $(STAMP)
	$(BIN)/python demo-app/run_demo.py

bench: $(STAMP)
	$(BIN)/python bench/run.py

# The receiver fuzz test with many random examples (make test runs a bounded, fixed set).
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest -q --timeout 0 tests/test_receiver_fuzz.py

# Attack a real gitsync on loopback, then inject faults into its engine; both tables go
# to docs/reliability.md.
harden: $(STAMP)
	$(BIN)/python bench/harden.py
	$(BIN)/python bench/faults.py

clean:
	rm -rf $(VENV) .demo bench/out
