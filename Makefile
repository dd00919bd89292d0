# The two commands a newcomer needs: `make serve` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
WEIGHTS ?= weights.yaml

.PHONY: install serve demo test lint format tiny clean gpu-wheels

$(BIN)/retouch: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: on this kind of machine pip takes it from local disk;
	# on a CUDA box the same line gets the CUDA build from PyPI.
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[test]'
	touch $(BIN)/retouch

install: $(BIN)/retouch

# The committed registry with none of its files on disk (a fresh clone) serves the demo set,
# built once into ./tiny-weights; any other WEIGHTS must be complete. RETOUCH_HOST/RETOUCH_PORT apply.
serve: install
	$(BIN)/retouch serve --weights $(WEIGHTS) $(if $(filter weights.yaml,$(WEIGHTS)),--demo-if-missing)

# From a fresh clone to the web playground on a CPU: the tiny random-weight set, served at :8000.
demo: install
	test -f tiny-weights/weights.yaml || $(BIN)/retouch weights tiny ./tiny-weights
	$(BIN)/retouch serve --weights tiny-weights/weights.yaml

test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

tiny: install
	$(BIN)/retouch weights tiny ./tiny-weights

# The wheels the lent GPU machine lacks (its Python 3.12, x86-64) into ./.whl/, for the one GPU
# command in benchmarks/README.md (carry: [".whl"]). Needs PyPI, not the GPU.
gpu-wheels:
	$(BIN)/python benchmarks/gpu_wheels.py --dest .whl

clean:
	rm -rf $(VENV) tiny-weights data .pytest_cache
