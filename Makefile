# Two commands are the whole set-up: `make demo` and `make test`.
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

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
	$(BIN)/python -m pytest -q tests --durations=15

bench: $(STAMP)
	$(BIN)/python scripts/bench_overhead.py

clean:
	rm -rf $(VENV) build *.egg-info

# The CI gate of scripts/ci/benchmark-gate.yml, here on the CPU: the smoke suite against the committed baseline run.
.PHONY: bench-gate
GATE_OUT ?= results/dev-gate
bench-gate: $(STAMP)
	rm -rf $(GATE_OUT)
	$(BIN)/lstm-bench run suites/smoke.yaml --out $(GATE_OUT) --quiet --no-progress
	$(BIN)/lstm-bench compare "$$(ls -d results/baselines/smoke-cpu/*/ | tail -n 1)" \
		"$$(ls -d $(GATE_OUT)/smoke/*/ | tail -n 1)" --fail-on regression --out $(GATE_OUT)/compare
