# `make demo`: create .venv if missing, install the pinned dependencies, run the demo.
# `make test`: the same environment, then the whole test suite (what CI runs).
# `make test-fast`: the same without the tests marked slow (the learning tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Tests never touch the network: Hugging Face look-ups would otherwise retry for tens of seconds.
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

.PHONY: demo test test-fast venv clean

venv: $(STAMP)

$(STAMP): requirements.txt setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# The demo starts clean each time: checkpoint.overwrite=true replaces the previous demo run
# in its save_dir (a plain tools/run.py refuses a save_dir that already holds a run).
demo: $(STAMP)
	@echo "make demo: starting clean (checkpoint.overwrite=true replaces any previous demo run in its save_dir)"
	$(OFFLINE) $(PY) tools/run.py config=projects/albef/configs/demo/pretrain.yaml checkpoint.overwrite=true $(ARGS)

test: $(STAMP)
	$(OFFLINE) $(PY) -m pytest -q tests $(ARGS)

test-fast: $(STAMP)
	$(OFFLINE) $(PY) -m pytest -q -m "not slow" tests $(ARGS)

clean:
	rm -rf $(VENV) save data
