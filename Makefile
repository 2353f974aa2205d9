# Two entry points: `make demo` and `make test`; both set up .venv first (once).
# `make lab` opens the notebooks in JupyterLab (the `notebook` extra, installed once on top).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.thrlab-installed
LAB_STAMP := $(VENV)/.thrlab-notebook-installed
# torch goes in first: an unpinned resolve on a CPU machine pulls a multi-GB CUDA build.
# On a GPU machine override, e.g. `make demo TORCH_SPEC="torch>=2.6"`.
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "torch>=2.6" || echo "torch==2.13.0")

# Keep every cache inside the repo and never reach for the hub in tests.
TEST_ENV := HF_HOME=$(CURDIR)/.cache/hf HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
	TRANSFORMERS_OFFLINE=1 MPLCONFIGDIR=$(CURDIR)/.cache/mpl IPYTHONDIR=$(CURDIR)/.cache/ipython \
	JUPYTER_CONFIG_DIR=$(CURDIR)/.cache/jupyter JUPYTER_DATA_DIR=$(CURDIR)/.cache/jupyter-data \
	JUPYTER_RUNTIME_DIR=$(CURDIR)/.cache/jupyter-runtime THRLAB_CACHE=$(CURDIR)/.cache/thrlab \
	TOKENIZERS_PARALLELISM=false

.PHONY: setup demo test lab clean reproduce

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

# The lab is the user's own JupyterLab, so TEST_ENV's cache and config variables do not apply:
# ~/.jupyter (settings, themes, shortcuts), ~/.ipython, matplotlibrc, the hub cache and
# ~/.cache/thrlab stay the user's real ones, and the hub stays reachable (a notebook switched to a
# GPU preset downloads its model). One applies: TOKENIZERS_PARALLELISM=false, as for `make demo`
# (the tokenizers library warns on stderr when a process forks after using its thread pool).
# JUPYTER_PATH is not needed: jupyter_core >= 5 looks in the venv's share/jupyter before the user's
# (~/.local/share/jupyter), so the venv's python3 kernel (thrlab installed) and widgets extension
# win over a user-level kernelspec of the same name. Nothing is registered outside the repo.
# e.g. make lab ARGS="--no-browser --port 8899"
lab: $(LAB_STAMP)
	TOKENIZERS_PARALLELISM=false $(BIN)/jupyter lab notebooks/ $(ARGS)

$(LAB_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -c requirements-lock.txt -e ".[notebook]"
	touch $(LAB_STAMP)

# Re-run every paper notebook (papermill) and regenerate paper_figures/; finished work is reused.
# e.g. make reproduce ARGS="--seeds 3" or ARGS="--preset qwen2.5-math-1.5b 03_exploitation"
reproduce: $(STAMP)
	$(TEST_ENV) $(BIN)/python -m thrlab.paper.reproduce $(ARGS)

clean:
	rm -rf $(VENV) .cache
