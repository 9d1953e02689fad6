# The two commands that do everything on a fresh machine:
#   make demo   -- install the package and run a short demonstration
#   make test   -- install what the tests need, then run every test:
#                  the engine's C tests (plain, ASan+UBSan, valgrind, TSan),
#                  the pytest suite, and the package as users get it (the
#                  sdist and a manylinux wheel built, the sdist installed
#                  and tested on every CPython 3.9-3.13 found: .ci/pymatrix)
#
# The development loop (no install: the extension is built in place, into
# python/parmapper/, and the tests import that build):
#   make dev                      build in place, then every test (pytest -x)
#   make dev T=tests/test_x.py    ... then one file (T: any pytest arguments,
#                                 e.g. T="tests/test_x.py -k name")
#   make dev-c                    the engine's C tests, plain
#   make dev-c T=NAME             one C test, in this process (gdb-able):
#                                 engine/build/runner NAME
#
# Where Python things go: inside an active virtual environment, into it;
# otherwise into .venv/ in the project, made with the default python3 (a
# system Python may refuse pip installs: PEP 668).  PYTHON=... overrides.
SYS_PYTHON ?= python3
IN_VENV := $(shell $(SYS_PYTHON) -c 'import sys; print(int(sys.prefix != sys.base_prefix))' 2>/dev/null)
ifeq ($(IN_VENV),1)
PYTHON ?= $(SYS_PYTHON)
VENV_NOTE = using the active virtual environment ($(shell $(SYS_PYTHON) -c 'import sys; print(sys.prefix)'))
else
PYTHON ?= .venv/bin/python
VENV_NOTE = not in a virtual environment: using .venv/ in the project (made with $(SYS_PYTHON))
endif
PIP = $(PYTHON) -m pip --disable-pip-version-check

.PHONY: demo test install venv test-deps test-c test-py test-dist clean dev dev-c

# Only when PYTHON is the project's .venv: made once, with pip.
.venv/bin/python:
	@echo "make: not in a virtual environment: making .venv/ with $(SYS_PYTHON)"
	$(SYS_PYTHON) -m venv .venv || { echo "make: could not make .venv with '$(SYS_PYTHON) -m venv'" \
	    "(on Debian/Ubuntu: apt-get install python3-venv)"; rm -rf .venv; exit 1; }

venv: $(filter .venv/bin/python,$(PYTHON))
	@echo "make: $(VENV_NOTE); python: $(PYTHON)"

install: venv
	$(PIP) install -q .

demo: install
	$(PYTHON) -m parmapper

test-deps: venv
	@command -v valgrind >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq valgrind)
	@command -v pkg-config >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq pkg-config)
	$(PIP) install -q ".[test,release]"

test-c:
	$(MAKE) -C engine check asan valgrind tsan
	$(MAKE) -C engine install-check

# The whole suite against the package installed from the tree: reinstalled
# first (pip install .), so an edit is never tested through a stale copy.
# `make test` runs the suite through test-dist instead; `make dev` is the
# faster loop (an in-place build, no install).
test-py: install
	@echo "make: testing the package just reinstalled from the tree into $$($(PYTHON) -c 'import sys; print(sys.prefix)')"
	$(PYTHON) -m pytest -q -p no:cacheprovider tests

# T: pytest arguments for dev, a C test's name for dev-c (see the top).
T ?=
dev: venv
	@$(PYTHON) -c 'import pytest, setuptools' 2>/dev/null || { echo "make: $(PYTHON) lacks pytest or setuptools: run 'make test-deps' once"; exit 1; }
	$(PYTHON) setup.py -q build_ext --inplace
	PYTHONPATH=$(CURDIR)/python $(PYTHON) -m pytest -q -p no:cacheprovider -x $(or $(T),tests)

dev-c:
	$(MAKE) -C engine build/runner
	./engine/build/runner $(T)

# The sdist and the wheel, auditwheel, and the suite against the sdist
# installed on every CPython 3.9-3.13 found; the slow tests/reliability on
# one version only, PYTHON's.
test-dist:
	PM_RELIABILITY_ON=$$($(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])') \
	    .ci/pymatrix $(PYTHON)

test: test-deps test-c test-dist

clean:
	$(MAKE) -C engine clean
	rm -rf build dist *.egg-info python/*.egg-info
