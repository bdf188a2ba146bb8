# Two entry points (see README): `make run` sets up and runs the main job, `make test` the suite.
# The venv gets PyTorch's CPU build first where there is no NVIDIA GPU: an unpinned torch would
# pull a multi-GB CUDA build.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA_DIR ?= ../shared/data
export RANKGYM_DATA_DIR ?= $(abspath $(DATA_DIR))

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	if ! command -v nvidia-smi >/dev/null 2>&1; then \
	  $(BIN)/pip install -q torch==2.13.0 || $(BIN)/pip install -q torch --index-url https://download.pytorch.org/whl/cpu; fi
	$(BIN)/pip install -q -e '.[test]'
	touch $@

.PHONY: setup run test test-slow gpu-wheels
setup: $(BIN)/.installed

# A real search on the offline MiniLM backbone, about ten minutes on 2 CPU cores: the best map
# within 40 % of uniform rank 16's adapter parameters, found by TPE (the agent the benchmarks
# recommend) over 64 maps scored by the elastic evaluator (one adapter trained once, each map a
# forward over 872 SST-2 examples held out of training); then promotion: the best map and the
# uniform map at the same budget retrained with the full recipe (8,192 examples) with 3 seeds each,
# validated on the validation split.
run: setup
	$(BIN)/rankgym search RankSearch-minilm-sst2-v0 --agent tpe --budget 64 --param-budget 0.4 --env evaluator=elastic --promote 1

# The PEFT export relies on rank_pattern matching escaped full module names, which PEFT does from
# 0.15 (0.14 silently gives every module the default rank): the PEFT tests also run on that floor,
# the version pyproject.toml names.
PEFT_FLOOR := 0.15.0
test: setup
	$(BIN)/pytest -q
	test -d $(VENV)/peft-floor || $(BIN)/pip install -q --no-deps --target $(VENV)/peft-floor peft==$(PEFT_FLOOR)
	PYTHONPATH=$(VENV)/peft-floor $(BIN)/pytest -q -p no:cacheprovider tests/test_rankmap.py -k peft

test-slow: setup
	$(BIN)/pytest -q -m slow

# What benchmarks/gpu_check.py installs on a bare GPU machine (torch, transformers and peft are there,
# gymnasium is not): pure-Python wheels, carried in the ignored .whl/gpu folder.
gpu-wheels: setup
	$(BIN)/pip download -q --no-deps --only-binary=:all: -d .whl/gpu "gymnasium==$$($(BIN)/python -c 'import gymnasium; print(gymnasium.__version__)')" cloudpickle farama-notifications
