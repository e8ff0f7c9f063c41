# `make test` sets everything up on a fresh machine, then runs the suite.
# torch is pinned and installed first so pip never pulls a multi-GB CUDA build.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed

.PHONY: test install clean demo

$(PY):
	python3 -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

# A complete domain-generalisation experiment on the package's SYNTHETIC world, on CPU, in minutes:
# writes demo-report/ (report.md, metrics.json, figures/, scene/). The world is cached (~/.cache/spectralmoe).
# The start time is passed on so that the report gives the wall time with the set-up included.
demo:
	@start=$$(date +%s.%N); $(MAKE) --no-print-directory install && \
		$(PY) -m spectralmoe.cli demo --out demo-report --started $$start

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
