# The two commands of the README:
#   make run    set up, then run the main job (CINCER on breast/fullnet, the paper's protocol)
#   make test   set up, then run the test suite
# ARGS overrides the cincer command line, e.g. make run ARGS="serve" or ARGS="run --selector none".
VENV ?= .venv
ARGS ?= run --dataset breast --model fullnet --selector top_fisher --out runs/breast_fullnet_top_fisher

.PHONY: setup run test lint

setup:
	@VENV=$(VENV) bash scripts/setup.sh

run: setup
	$(VENV)/bin/cincer $(ARGS)

test: setup
	$(VENV)/bin/python -m pytest

lint: setup
	$(VENV)/bin/ruff check src tests scripts
	$(VENV)/bin/mypy
