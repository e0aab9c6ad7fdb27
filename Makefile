# Two commands are the whole set-up: `make demo` and `make test`.
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# Test processes (pytest-xdist; --dist loadgroup keeps the netns tests on one worker). 4 on this 2-core VM: most
# slow tests wait (on Ray, node deaths, hung trials) more than they compute. 0 runs them serially.
TEST_WORKERS ?= 4

.PHONY: demo test install bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup tests --durations=25

bench: $(STAMP)
	$(BIN)/python scripts/bench_overhead.py

clean:
	rm -rf $(VENV) build *.egg-info

# The CI gate of scripts/ci/benchmark-gate.yml, here on the CPU: the working tree (the change) against GATE_BASE,
# paired in time over suites/gate.yaml's four cells (lstm-bench ab); exit 1 on a regression.
.PHONY: bench-gate
GATE_OUT ?= results/dev-gate
GATE_BASE ?= HEAD~1
bench-gate: $(STAMP)
	$(BIN)/lstm-bench ab suites/gate.yaml --baseline $(GATE_BASE) --allow-dirty --pass-if-identical \
		--fail-on regression --out $(GATE_OUT)
