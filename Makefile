# The README quickstart: `make study` and `make test`. Both build .venv first
# when it is missing or older than pyproject.toml.
PY := .venv/bin/python
STUDY ?= gan_stability
ARGS ?=

.PHONY: study test lint venv clean notebooks

venv: .venv/.installed

.venv/.installed: pyproject.toml
	test -x $(PY) || python3.11 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

study: venv
	$(PY) -m study.run $(STUDY) $(ARGS)

test: venv lint
	$(PY) -m pytest -q -n 2 --maxschedchunk 1  # both cores, tests handed out in order (docs/testing.md)

# JupyterLab on analysis/notebooks, reading STORE (default: ./mlflow.db)
notebooks: venv
	$(PY) -m analysis.lab $(if $(STORE),--store $(STORE)) $(ARGS)

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

clean:
	rm -rf runs mlruns mlartifacts mlflow.db reports
