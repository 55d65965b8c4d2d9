# The two commands of the README:
#   make demo   runs the main job (the ResNet benchmark on Fashion-MNIST, config `quick`: 2 seeds, a few minutes
#               on a 2-core machine, measured in the README) and writes a report that opens with LAWA's lead beyond
#               the seed spread
#   make test   installs everything the tests need and runs ruff and the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.lawa-installed
DEMO_OUT ?= runs/quick

.PHONY: demo test install data lint docs dist

$(STAMP): pyproject.toml setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# These two are a matched pair that installs from local files on these machines.
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) data

# Real Fashion-MNIST from Debian (nothing is downloaded at run time).
data:
	@if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then \
	  if [ "$$(id -u)" = 0 ]; then (apt-get install -y -q dataset-fashion-mnist || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist)); \
	  else echo "Fashion-MNIST missing: run 'sudo apt-get install dataset-fashion-mnist'"; exit 1; fi; \
	fi

demo: install
	$(BIN)/lawa bench resnet --config configs/quick.yaml --out $(DEMO_OUT)

# The documentation site (mkdocs.yml, docs/) into site/, strict: a broken link or docstring target fails.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -d site

# The sdist and the wheel into dist/, checked as PyPI would (tests/test_packaging.py installs and runs the wheel).
dist: $(STAMP)
	rm -rf dist
	$(BIN)/python -m build --outdir dist .
	$(BIN)/twine check --strict dist/*

lint: $(STAMP)
	$(BIN)/ruff check lawa_optim benchmarks tests

test: install lint
	$(BIN)/python -m pytest -q -ra
