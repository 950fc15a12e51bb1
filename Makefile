# The two commands a new user types: `make demo` and `make test`.
# Each installs what is missing first (tools/setup_env.sh); re-running is fast.
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= data
RUNS ?= runs

.PHONY: setup demo test test-fast bench clean-demo

setup:
	@tools/setup_env.sh $(VENV)

## demo: convert the embedded digits dataset, train the demo preset on it, plot the curves, re-evaluate the best checkpoint
demo: setup
	$(PY) tools/convert_datasets.py digits --out $(DATA)
	$(PY) train_fast.py --preset demo --data-dir $(DATA)/digits --output $(RUNS)
	$(PY) tools/plot_run.py $(RUNS)/demo
	$(PY) tools/validate.py --data-dir $(DATA)/digits --checkpoint $(RUNS)/demo --json $(RUNS)/demo/validate.json

## test: the whole suite, slow tests included (what CI runs); the 15 slowest are listed, to watch its time
test: setup
	$(PY) -m pytest -q --durations=15 tests

## test-fast: skip the tests marked slow (torch.compile, end-to-end runs)
test-fast: setup
	$(PY) -m pytest -q -m "not slow" tests

## bench: the side-by-side benchmarks on this machine (JSON in bench-*.json; docs/benchmarks.md records them)
bench: setup
	$(PY) tools/bench_model.py --json bench-model.json
	$(PY) tools/bench_convert.py --json bench-convert.json
	$(PY) tools/bench_loader.py --make-photos 2000 --data $(DATA)/bench-photos --json bench-loader.json

clean-demo:
	rm -rf $(DATA)/digits $(RUNS)/demo
