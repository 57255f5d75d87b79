# Set-up and entry points. `make test` and `make demo` work on a fresh clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# pytest-xdist workers for make test (2 fits the 2-core CI machine; TEST_WORKERS=0 runs in one process).
TEST_WORKERS ?= 2

.PHONY: venv espeak test demo demo-audio bench gpu-check clean

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

venv: $(STAMP)

# espeak-ng synthesises the embedded speech corpus of the audio demo (Debian/Ubuntu: apt).
espeak:
	@command -v espeak-ng >/dev/null || { command -v apt-get >/dev/null && \
		(apt-get update -qq && apt-get install -y -qq espeak-ng >/dev/null) || \
		echo "warning: could not install espeak-ng; the audio demo and its tests need it"; }

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder tests

demo: $(STAMP)
	$(PY) -m edm_spectral.toy --outdir=out/demo

demo-audio: $(STAMP) espeak
	$(PY) -m edm_spectral.audio.demo --outdir=out/demo-audio

bench: $(STAMP)
	$(PY) -m edm_spectral.bench

# On a CUDA machine (a few minutes): the CUDA checks, the spectral bench with the released DDPM++
# at 64x64, the lean-loop and fast-path ratios; reports in out/gpucheck/gpucheck.{json,md}.
gpu-check: $(STAMP)
	$(PY) -m edm_spectral.gpucheck --out=out/gpucheck

clean:
	rm -rf $(VENV) out .pytest_cache
