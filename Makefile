# medssl-bundles: `make demo` and `make test` set everything up from a clean clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
SAMPLES ?= data/samples
BUNDLE ?=
PYTEST_ARGS ?=
# make test spreads the tests over the cores, one torch thread each (two threads per worker would oversubscribe)
TEST_WORKERS ?= $(shell nproc 2>/dev/null || echo 1)
APT_DATA := mricron-data invesalius-examples
STAMP := $(VENV)/.installed

.PHONY: help install data demo test lint format bench clean

help:
	@echo "make demo [BUNDLE='a b'] set up, build the sample data, run every bundle's demo"
	@echo "make test [TEST_WORKERS=N] set up, build the sample data, lint, run the whole test suite (N workers, default: every core)"
	@echo "make bench [GENESIS_OFFICIAL=..] [MAE_OFFICIAL=..] [SWAV_OFFICIAL=..] [DETR_OFFICIAL=..]  speed benchmarks (benchmarks/), side by side with the authors' code"
	@echo "make evidence [BUNDLE='a b'] [SEEDS=3]  does each pre-training learn and help? (docs/evidence.md)"
	@echo "make dist [BUNDLE=..] [DIST_URL=..]  self-contained bundle zips + model_info.json in dist/"
	@echo "make lock [BUNDLE=..]     record bundle versions and content hashes (bundles/versions.lock.json)"
	@echo "make monailabel-env       MONAI Label 0.8.5 in .venv/envs (docs/monai_label.md)"

# torch goes in first and alone: if pip resolved anything else first it would pull a CUDA build.
$(STAMP): requirements.txt setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -c "import torch; print('torch==' + torch.__version__)" > $(VENV)/constraints.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -c $(VENV)/constraints.txt -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps nilearn==0.14.1 pydicom-data==1.0.0 medmnist==3.0.2
	$(PY) -m pip install --quiet --disable-pip-version-check -c $(VENV)/constraints.txt --no-deps -e .
	touch $@

install: $(STAMP)

# Debian's data packages hold the only real head CT and the Colin27 atlas; skipped (and reported) without root apt.
data: $(STAMP)
	@if [ ! -d /usr/share/mricron/templates ] || [ ! -d /usr/share/doc/invesalius-examples ]; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_DATA)) \
	      || echo "apt-get could not install $(APT_DATA); the sample set is built without them"; \
	  else echo "no root apt-get: $(APT_DATA) not installed; the sample set is built without them"; fi; \
	fi
	$(PY) -m medssl.data samples --out $(SAMPLES)

demo: data
	$(PY) -m medssl.demo --samples $(SAMPLES) $(foreach b,$(BUNDLE),--bundle $(b))

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: data lint monailabel-env
	OMP_NUM_THREADS=1 MEDSSL_SAMPLES=$(abspath $(SAMPLES)) $(PY) -m pytest -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The side-by-side against the authors' code needs their checkouts, outside this repository: GENESIS_OFFICIAL is
# ModelsGenesis' pytorch folder, MAE_OFFICIAL a facebookresearch/mae checkout (timm 0.4.5 on PYTHONPATH, see the script),
# SWAV_OFFICIAL a facebookresearch/swav checkout, DETR_OFFICIAL a fundamentalvision/Deformable-DETR checkout.
GENESIS_OFFICIAL ?=
MAE_OFFICIAL ?=
SWAV_OFFICIAL ?=
DETR_OFFICIAL ?=
bench: data
	$(PY) benchmarks/genesis_transforms.py --samples $(SAMPLES) $(if $(GENESIS_OFFICIAL),--official-path $(GENESIS_OFFICIAL),)
	$(PY) benchmarks/training_steps.py --samples $(SAMPLES)
	$(PY) benchmarks/pipeline_throughput.py --samples $(SAMPLES)
	$(PY) benchmarks/inference_speed.py --samples $(SAMPLES)
	@if [ -z "$(GENESIS_OFFICIAL)" ]; then \
	  echo "make bench: the side-by-side with the authors' code was NOT run: set GENESIS_OFFICIAL=<ModelsGenesis checkout>/pytorch (and MAE_OFFICIAL=<mae checkout>, SWAV_OFFICIAL=<swav checkout>, DETR_OFFICIAL=<Deformable-DETR checkout> for the MAE, Sinkhorn and deformable-sampling rows)"; \
	else \
	  if [ -z "$(MAE_OFFICIAL)" ]; then echo "make bench: MAE_OFFICIAL unset, the MAE rows are SKIPPED"; fi; \
	  if [ -z "$(SWAV_OFFICIAL)" ]; then echo "make bench: SWAV_OFFICIAL unset, the Sinkhorn row is SKIPPED"; fi; \
	  if [ -z "$(DETR_OFFICIAL)" ]; then echo "make bench: DETR_OFFICIAL unset, the deformable-sampling row is SKIPPED"; fi; \
	  $(PY) benchmarks/official_side_by_side.py --samples $(SAMPLES) --genesis-official $(GENESIS_OFFICIAL) \
	    $(if $(MAE_OFFICIAL),--mae-official $(MAE_OFFICIAL),) $(if $(SWAV_OFFICIAL),--swav-official $(SWAV_OFFICIAL),) \
	    $(if $(DETR_OFFICIAL),--detr-official $(DETR_OFFICIAL),); \
	fi

.PHONY: evidence
evidence: data
	$(PY) benchmarks/evidence.py --samples $(SAMPLES) $(foreach b,$(BUNDLE),--bundle $(b)) $(if $(SEEDS),--seeds $(SEEDS),)

clean:
	rm -rf $(VENV) $(SAMPLES) dist .pytest_cache .ruff_cache

# Bundles as users receive them (medssl.bundle.dist): self-contained zips + model_info.json in dist/ (DIST_URL: the
# folder URL they will be served from, e.g. https://github.com/<owner>/<repo>/releases/download/<tag>), the version
# lock, and MONAI Label's own environment (torch linked from $(VENV), no second torch; see docs/monai_label.md).
.PHONY: dist lock monailabel-env

dist: $(STAMP)
	$(PY) -m medssl.bundle dist --out dist $(if $(DIST_URL),--url $(DIST_URL),) $(BUNDLE)

lock: $(STAMP)
	$(PY) -m medssl.bundle lock $(BUNDLE)

monailabel-env: $(STAMP)
	$(PY) tools/side_venv.py $(VENV)/envs/monailabel-0.8.5 -r tools/monailabel-requirements.txt \
	  --no-deps-spec monailabel==0.8.5 --path tools/monailabel_shim
