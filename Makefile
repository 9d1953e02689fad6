# The two commands that do everything on a fresh machine:
#   make demo   -- install the package and run a short demonstration
#   make test   -- install what the tests need, then run every test:
#                  the engine's C tests (plain, ASan+UBSan, valgrind, TSan)
#                  and the pytest suite.
PYTHON ?= python3
PIP = $(PYTHON) -m pip

.PHONY: demo test install test-deps test-c test-py clean

install:
	$(PIP) install -q --disable-pip-version-check .

demo: install
	$(PYTHON) -m parmapper

test-deps:
	@command -v valgrind >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq valgrind)
	@command -v pkg-config >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq pkg-config)
	$(PIP) install -q --disable-pip-version-check ".[test]"

test-c:
	$(MAKE) -C engine check asan valgrind tsan
	$(MAKE) -C engine install-check

test-py:
	$(PYTHON) -m pytest -q -p no:cacheprovider tests

test: test-deps test-c test-py

clean:
	$(MAKE) -C engine clean
	rm -rf build *.egg-info
