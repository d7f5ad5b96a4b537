# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# uv resolves and installs the ~180 pinned packages in about a minute (plus ~80 s compiling bytecode), pip in 5.5.
UV     := $(VENV)/bin/uv
# constraints.txt pins every package version that is known to work (see docs/install.md).
# Bytecode compiled at install, as pip does: else the first import of each module compiles it, and Ray's agents,
# importing cold on a busy machine, miss the raylet's 15 s start-up window (the raylet then aborts).
INSTALL := $(UV) pip install --quiet --compile-bytecode --python $(PY) -c constraints.txt
# llama-cpp-python (the cpu-lm extra) compiles llama.cpp: 20 minutes on 2 cores without its multimodal library
# (25 with it; it serves image models only). pip installs that extra because pip's wheel cache reliably
# keeps the build for the next install on the machine; uv, here, fetched the sdist anew and compiled again.
CMAKE_ARGS ?= -DLLAVA_BUILD=OFF
export CMAKE_ARGS

.PHONY: demo test install install-dev lock clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(UV): | $(PY)
	$(PY) -m pip install --quiet -c constraints.txt uv

# Stamps make re-runs instant; they are rebuilt when pyproject.toml or constraints.txt change.
$(VENV)/.installed: $(UV) pyproject.toml constraints.txt
	$(INSTALL) -e .
	touch $@

# llama-cpp-python alone through pip (its wheel cache keeps the build), then one uv install of everything else:
# uv leaves the pinned llama-cpp-python it finds installed. pip resolving all ~190 packages itself took 50 s more.
$(VENV)/.installed-dev: $(UV) pyproject.toml constraints.txt
	$(PY) -m pip install --quiet --no-deps -c constraints.txt llama-cpp-python
	$(INSTALL) -e ".[dev,cpu-lm]"
	touch $(VENV)/.installed $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	$(PY) -m gepa_lab.corpus prepare banking77
	$(PY) -m gepa_lab.sweep sweep=demo $(ARGS)

# Two pytest-xdist workers: the Ray and timing tests one after another on one, the rest beside them on the other
# at low priority, in the CPU the first leaves idle (tests/conftest.py). TEST_WORKERS=0 runs everything in turn.
TEST_WORKERS ?= 2

test: install-dev
	bash scripts/ensure_redis.sh
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

# Refresh constraints.txt from the current environment (after a deliberate upgrade; gepa_lab itself is editable).
lock: install-dev
	$(UV) pip freeze --python $(PY) --exclude-editable --exclude pip --exclude setuptools > constraints.txt

clean:
	rm -rf outputs .pytest_cache
