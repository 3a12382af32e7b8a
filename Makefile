# bids_ketamine: the two entry points of README.md.
#   make demo   install the app and run it on the built-in simulated trial
#   make test   install system tools + the app with its test extra, then run every test
PYTHON ?= python3
SYSTEM_PACKAGES = mrtrix3 chromium chromium-driver slurm-wlm munge buildah mmdebstrap

.PHONY: demo test test-fast test-extended test-container system-deps

demo:
	$(PYTHON) -m pip install --no-compile . && bids-ketamine-demo demo_output

# Reference tools used by the tests (MRtrix3 for denoising/tensor agreement, Chromium for
# the reports, Slurm for the HPC test, buildah and mmdebstrap to build and run the container
# image). Installed only where we are root with apt-get; elsewhere the tests that need them
# skip with a message.
system-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then \
	    echo "installing$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  fi; \
	else echo "not root or no apt-get: tests that need $(SYSTEM_PACKAGES) will skip"; fi

# Byte-code compiled once: this machine sets PYTHONDONTWRITEBYTECODE, so without it every test
# process (nipype workers, Slurm jobs, CLI runs) compiles the app, numpy, scipy and ANTsPy again
# (about 2 s each).  Best effort: skipped where site-packages is read-only.
COMPILE_PACKAGES = import os, numpy, scipy, ants; print(" ".join(os.path.dirname(m.__file__) for m in (numpy, scipy, ants)))

test: system-deps
	$(PYTHON) -m pip install -q -e '.[test]'
	-$(PYTHON) -m compileall -q -j 0 bids_ketamine $$($(PYTHON) -c '$(COMPILE_PACKAGES)') >/dev/null
	$(PYTHON) -m pytest -m "not extended" -p no:cacheprovider -n 2 --dist loadfile --no-loadscope-reorder --durations=25

test-fast:
	$(PYTHON) -m pytest

# Real-data checks that do not fit CI's 30 minutes (about 10 minutes on 2 cores): the uih-umr770
# AP/PA MD agreement, the philips-elition b=0 agreement and GRE-vs-PEPOLAR fields, the sub-elition
# participant run (T1w volumes, white-matter MD, MRtrix3 agreement), the sub-canon known gap (xfail).
test-extended:
	$(PYTHON) -m pytest -m extended -p no:cacheprovider -s

# The container test alone (it is part of `make test` too): builds the Docker image with buildah
# (base from mmdebstrap) and runs it; needs root, Debian's mirror and PyPI (docs/hpc.md,
# "The container test").
test-container: system-deps
	$(PYTHON) -m pytest -m container -p no:cacheprovider -s tests/test_container.py
