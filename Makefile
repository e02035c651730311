# mailpush: `make demo` runs the analyzer on the bundled sample captures, `make test` runs the full suite.
# Both work on a fresh Debian machine with Python 3.11: they create .venv and install what they need
# (and, when run as root, the Debian packages tshark, chromium and postgresql).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO   := build/demo
SAMPLES = $(sort $(wildcard captures/*.pcap captures/*.pcapng captures/*.cap captures/*.gz))

.PHONY: demo test venv system-deps docs dist bench clean captures

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

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
