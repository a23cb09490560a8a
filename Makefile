# bnstudy: `make sweep` runs the default study, `make test` runs the tests; both set up
# everything first (virtualenv, packages, dataset). EXP=, STUDY= pick another study.
PYTHON     ?= python3
VENV       ?= .venv
BIN        := $(VENV)/bin
# torch/torchvision pinned to the builds on this project's machines; override for yours,
# e.g. `make test TORCH_PINS=` to let pip choose within pyproject.toml's ranges.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
EXP        ?= experiments/default.toml
ARGS       ?=
STUDY      ?= results/$(basename $(notdir $(EXP)))
SUDO       := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEBIAN_FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
STAMP      := $(VENV)/.installed

.PHONY: help setup data test sweep report reference bench clean

help:
	@echo "make sweep   set up, then run the study in EXP (default $(EXP)); ARGS=\"--set epochs=2\" passes flags"
	@echo "make report  tables and figures for STUDY (default $(STUDY))"
	@echo "make test    set up, then run the tests"
	@echo "make reference  copy the reports of REFERENCE_STUDIES (after their sweeps) into results/reference/"
	@echo "make bench   time bnstudy against the reference notebook loop"

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH_PINS) -e '.[dask,test]'
	touch $@

data:
	@if [ -n "$$BNSTUDY_DATA" ] || [ -d data/fashion-mnist ] || [ -f $(DEBIAN_FMNIST) ]; then \
	  echo "Fashion-MNIST: found"; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  echo "Fashion-MNIST: installing Debian's dataset-fashion-mnist"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	else \
	  echo "bnstudy: error: Fashion-MNIST not found and apt-get is not available: put the four" \
	       "*-ubyte.gz files in data/fashion-mnist/ or set BNSTUDY_DATA=DIR"; exit 2; \
	fi

test: $(STAMP) data
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

sweep: $(STAMP) data
	$(BIN)/bnstudy sweep $(EXP) $(ARGS)

report: $(STAMP)
	$(BIN)/bnstudy report $(STUDY)

# The published answer: each study's report, tables and PNG figures (no run files), made
# from results/<study>/ by this code, into results/reference/<study>/ (committed); then the
# README's answer, rendered from those reports' summaries.
REFERENCE_STUDIES ?= notebook default momentum activation remedies
reference: $(STAMP)
	@for study in $(REFERENCE_STUDIES); do \
	  $(BIN)/bnstudy report results/$$study || exit 2; \
	  rm -rf results/reference/$$study && mkdir -p results/reference/$$study/figures || exit 2; \
	  for file in report.md summary.csv cells.csv claims.csv comparisons.csv; do cp results/$$study/$$file results/reference/$$study/; done; \
	  cp results/$$study/figures/*.png results/reference/$$study/figures/; \
	done; du -sh results/reference
	$(BIN)/python -m bnstudy.report.answer README.md results/reference $(REFERENCE_STUDIES)

bench: $(STAMP) data
	$(BIN)/python bench/bench_cpu.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
