# mailpush: `make demo` runs the analyzer on the bundled sample captures, `make test` runs the full suite.
# Both work on a fresh Debian machine with Python 3.11: they create .venv and install what they need
# (and, when run as root, the Debian packages gcc and pythonX.Y-dev first, which build the C extensions, then
# tshark, chromium and postgresql).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO   := build/demo
SAMPLES = $(sort $(wildcard captures/*.pcap captures/*.pcapng captures/*.cap captures/*.gz))

.PHONY: demo test venv build-deps system-deps docs dist bench clean captures

venv: $(STAMP)

# build-deps is order-only: it runs (a quick check) before the package is built, and never forces a reinstall.
$(STAMP): setup.cfg pyproject.toml setup.py analyzer/ingest/_recordwalk.c analyzer/dissect/_prefilter.c | build-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@$(BIN)/python -c 'import analyzer.ingest._recordwalk, analyzer.dissect._prefilter' 2>/dev/null || \
	  echo "WARNING: the C extensions were not built (no compiler or Python headers: make build-deps as root);" \
	       "mailpush runs on its slower Python paths and test_the_c_extensions_are_built fails" >&2
	touch $(STAMP)

# What pip needs to compile the two C extensions (record walk, pre-filter): the C compiler Python was built with
# and Python's headers. Without them the package still installs, on slower Python/numpy paths, with a warning;
# tests/test_speed_paths.py::test_the_c_extensions_are_built then fails.
build-deps:
	@missing=""; \
	cc=$$($(PYTHON) -c 'import sysconfig; print((sysconfig.get_config_var("CC") or "cc").split()[0])'); \
	command -v "$$cc" >/dev/null 2>&1 || missing="$$missing gcc"; \
	$(PYTHON) -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
	  || missing="$$missing $$($(PYTHON) -c 'import sys; print("python%d.%d-dev" % sys.version_info[:2])')"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "warning: missing$$missing and not root: the C extensions will not be built (slower; a test fails)" >&2; \
	  fi; \
	fi

# Debian packages the tests need: real tshark (second engine, cross-checks), a real browser (web tests) and the
# PostgreSQL server (the web tests start a throwaway cluster of their own; Debian keeps initdb out of PATH).
system-deps:
	@missing=""; \
	command -v tshark >/dev/null 2>&1 || missing="$$missing tshark"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "warning: missing$$missing and not root: tests that need them will be skipped" >&2; \
	  fi; \
	fi

demo: $(STAMP)
	mkdir -p $(DEMO)/plots
	$(BIN)/mailpush analyze $(SAMPLES) --plots $(DEMO)/plots
	$(BIN)/mailpush analyze $(SAMPLES) --format html -o $(DEMO)/report.html
	$(BIN)/mailpush analyze $(SAMPLES) --format json -o $(DEMO)/report.json
	@echo
	@echo "HTML report: $(DEMO)/report.html   plots: $(DEMO)/plots/"

test: $(STAMP) system-deps docs
	$(BIN)/python -m pytest -q -p no:cacheprovider

# HTML documentation in build/site; --strict fails on a broken link or anchor and on a page missing from the nav.
docs: $(STAMP)
	$(BIN)/mkdocs build --strict --quiet

# sdist and wheel in build/dist (the build backend from .venv: no download).
dist: $(STAMP)
	$(BIN)/python -m build --no-isolation --outdir build/dist .

captures: $(STAMP)
	$(BIN)/python captures/generate.py
	$(BIN)/python captures/pairs.py

# Speed and memory targets live here, never in timed unit tests (results: benchmarks/results*.md).
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_events.py --analyze
	$(BIN)/python benchmarks/bench_batch.py

clean:
	rm -rf build .pytest_cache
