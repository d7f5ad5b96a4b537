# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# constraints.txt pins every package version that is known to work (see README: "Reproducible installs").
INSTALL := $(PIP) install --quiet -c constraints.txt

.PHONY: demo test install install-dev lock clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# Stamps make re-runs instant; they are rebuilt when pyproject.toml or constraints.txt change.
$(VENV)/.installed: $(PY) pyproject.toml constraints.txt
	$(INSTALL) -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(INSTALL) -e ".[dev,cpu-lm]"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	$(PY) -m gepa_lab.corpus prepare banking77
	$(PY) -m gepa_lab.sweep sweep=demo $(ARGS)

test: install-dev
	bash scripts/ensure_redis.sh
	$(PY) -m pytest $(PYTEST_ARGS)

# Refresh constraints.txt from the current environment (after a deliberate upgrade).
lock: install-dev
	$(PIP) freeze --exclude-editable | grep -v '^gepa.lab' > constraints.txt

clean:
	rm -rf outputs .pytest_cache
