# Phonehome: `make demo` runs the main job, `make test` runs the test suite.
# Each installs what it needs: Debian packages (packaging/system-deps.sh) and a virtual
# environment in .venv with the pinned dependencies.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_DIR := var/demo

.PHONY: demo test test-stress lint bench venv deb test-deb sysdeps-demo sysdeps-test sysdeps-bench sysdeps-deb clean

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

venv: $(VENV)/.installed

sysdeps-test:
	packaging/system-deps.sh test

sysdeps-bench:
	packaging/system-deps.sh bench

sysdeps-demo:
	packaging/system-deps.sh demo

# The live sensor in the namespace lab (root); the offline analysis of a sample capture too.
demo: sysdeps-demo venv
	$(VENV)/bin/phonehome demo
	@echo
	@echo "== the same phone in a capture file: phonehome analyze =="
	mkdir -p $(DEMO_DIR)/state
	$(PY) -c "from sensor.lab.synth import write_sample; write_sample('$(DEMO_DIR)/home.pcap')"
	$(VENV)/bin/phonehome analyze --config etc/demo.toml $(DEMO_DIR)/home.pcap

# Copy-paste check: no 8-line repeat in sensor/. Imports, signatures, docstrings and comments
# are not logic (pylint's defaults, spelled out): a module importing a list of constants or
# a wrapper restating its callee's keyword arguments is not a copy.
lint: venv
	$(VENV)/bin/ruff check sensor tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/pylint --disable=all --enable=duplicate-code --min-similarity-lines=8 \
	  --ignore-imports=y --ignore-signatures=y --ignore-docstrings=y --ignore-comments=y \
	  --persistent=n --score=n sensor

test: sysdeps-test venv lint
	$(VENV)/bin/pytest -q

# The suite beside two CPU hogs, as on a busy 2-core router or CI machine (issue 15's proof that
# no test depends on the machine's pace). RUNS=3 by default; stops at the first failing run.
RUNS ?= 3
test-stress: sysdeps-test venv lint
	@for i in $$(seq 1 $(RUNS)); do \
	  echo "== run $$i of $(RUNS) beside stress-ng --cpu 2"; \
	  stress-ng --cpu 2 --timeout 0 --quiet & hog=$$!; \
	  start=$$(date +%s); $(VENV)/bin/pytest -q -p no:cacheprovider; rc=$$?; \
	  kill $$hog; wait $$hog 2>/dev/null; \
	  echo "== run $$i: rc $$rc in $$(( $$(date +%s) - start )) s"; \
	  [ $$rc -eq 0 ] || exit $$rc; \
	done

bench: sysdeps-bench venv
	$(PY) -m bench.analyze_bench
	$(PY) -m bench.lookup_bench
	$(PY) -m bench.party_coverage
	$(PY) -m bench.scanner_bench
	$(PY) -m bench.household
	$(PY) -m bench.live_bench
	$(PY) -m bench.quic_bench
	$(PY) -m bench.hello_bench
	$(PY) -m bench.learn_bench
	$(PY) -m bench.fleet_bench
	$(PY) -m bench.policy_bench
	$(PY) -m bench.scrape_bench
	$(PY) -m bench.visibility_bench
	$(PY) -m bench.live_loop_bench
	$(PY) -m bench.open_ended_bench

# The Debian package (dist/phonehome_*.deb) and its install/boot test alone.
sysdeps-deb:
	packaging/system-deps.sh deb

deb: sysdeps-deb
	packaging/build-deb.sh dist

test-deb: sysdeps-test venv
	PHONEHOME_DEB_TEST=require $(VENV)/bin/pytest -q -m deb tests/test_packaging.py

clean:
	rm -rf $(VENV) var build dist .pytest_cache .mypy_cache .ruff_cache
