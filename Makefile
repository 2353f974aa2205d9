# Two entry points: `make demo` and `make test`; both set up .venv first (once).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.thrlab-installed
# torch goes in first: an unpinned resolve on a CPU machine pulls a multi-GB CUDA build.
# On a GPU machine override, e.g. `make demo TORCH_SPEC="torch>=2.6"`.
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "torch>=2.6" || echo "torch==2.13.0")

# Keep every cache inside the repo and never reach for the hub in tests.
TEST_ENV := HF_HOME=$(CURDIR)/.cache/hf HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
	TRANSFORMERS_OFFLINE=1 MPLCONFIGDIR=$(CURDIR)/.cache/mpl IPYTHONDIR=$(CURDIR)/.cache/ipython \
	JUPYTER_CONFIG_DIR=$(CURDIR)/.cache/jupyter JUPYTER_DATA_DIR=$(CURDIR)/.cache/jupyter-data \
	JUPYTER_RUNTIME_DIR=$(CURDIR)/.cache/jupyter-runtime THRLAB_CACHE=$(CURDIR)/.cache/thrlab \
	TOKENIZERS_PARALLELISM=false

.PHONY: setup demo test clean reproduce

setup: $(STAMP)

$(STAMP): pyproject.toml requirements-lock.txt
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "thrlab needs Python >= 3.10"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -c requirements-lock.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
		$(BIN)/python -m thrlab train --preset tiny

test: $(STAMP)
	$(TEST_ENV) $(BIN)/python -m pytest -q -p no:cacheprovider tests

# Re-run every paper notebook (papermill) and regenerate paper_figures/; finished work is reused.
# e.g. make reproduce ARGS="--seeds 3" or ARGS="--preset qwen2.5-math-1.5b 03_exploitation"
reproduce: $(STAMP)
	$(TEST_ENV) $(BIN)/python -m thrlab.reproduce $(ARGS)

clean:
	rm -rf $(VENV) .cache
