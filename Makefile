# Two commands: `make reproduce` (the main job) and `make test`. Both create .venv if missing.
VENV   ?= .venv
PYTHON := $(VENV)/bin/python
STAMP  := $(VENV)/.ersm-installed
PROFILE ?= ci

.PHONY: install test unit nbval reproduce notebooks full bench gpu-check clean-cache

$(STAMP): pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## make test: unit tests, then the committed notebooks re-executed and compared by nbval
test: install unit nbval

unit: install
	$(PYTHON) -m pytest tests -q

# The committed outputs hold on x86-64 CPUs with AVX2 (ersm/portability/numerics.py); elsewhere nbval is skipped with one line.
nbval: install
	@status=0; $(PYTHON) -m ersm check-portable || status=$$?; \
	if [ $$status -eq 3 ]; then exit 0; elif [ $$status -ne 0 ]; then exit $$status; fi; \
	$(PYTHON) -m pytest --nbval --nbval-current-env notebooks/ -q -p no:cacheprovider

## make reproduce: execute every notebook through papermill for PROFILE (ci by default)
reproduce: install
	$(PYTHON) -m ersm reproduce --profile $(PROFILE)

## re-execute the committed notebooks in place with their ci defaults (after changing them)
notebooks: install
	$(PYTHON) -m ersm reproduce --profile ci --inplace
	$(PYTHON) -m ersm table --profile ci --readme

## make full [JOBS=N]: train every model of the full profile (N at once on a GPU), then run the notebooks;
## the models committed under models/full (ersm/study/archive.py) are imported first and not trained again
JOBS ?= 1
full: install
	test ! -d models/full || $(PYTHON) -m ersm models import models/full
	$(PYTHON) -m ersm warm --profile full --jobs $(JOBS)
	$(PYTHON) -m ersm reproduce --profile full
	$(PYTHON) -m ersm table --profile full --readme

bench: install
	$(PYTHON) -m ersm bench

## make gpu-check [GPU_CHECK_ARGS=--dry-run]: the prepared check of the CUDA path, at most 8 minutes on one GPU
## (ersm/portability/gpu_check.py; writes results/gpu/check.json); without a GPU it prints one line and exits 0.
## On a lent GPU machine, whose python3 holds torch and which cannot install: make gpu-check PYTHON=python3
GPU_CHECK_ARGS ?=
gpu-check: $(if $(filter command line,$(origin PYTHON)),,install)
	@$(PYTHON) -m ersm gpu-check $(GPU_CHECK_ARGS)

clean-cache:
	rm -rf runs/cache
