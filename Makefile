# Two commands matter: `make demo` and `make test`. Each builds .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv test demo bench fuzz harden clean

venv: $(STAMP)

$(STAMP): pyproject.toml demo-app/requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]' -r demo-app/requirements.txt
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/python demo-app/run_demo.py

bench: $(STAMP)
	$(BIN)/python bench/run.py

# The receiver fuzz test with many random examples (make test runs a bounded, fixed set).
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest -q --timeout 0 tests/test_receiver_fuzz.py

# Attack a real gitsync on loopback; writes the table to docs/reliability.md.
harden: $(STAMP)
	$(BIN)/python bench/harden.py

clean:
	rm -rf $(VENV) .demo bench/out
