# Every target bootstraps itself: a fresh clone needs only python3 (3.10+) and make.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
MP := $(VENV)/bin/micropython
SCENARIO ?= tests/scenarios/demo_session.json

.PHONY: deps esp32 test run bench fuzz deploy clean

# The venv is rebuilt only when requirements.txt changes; tools/deps.py skips work
# itself when lib/ already matches the pinned list.
$(VENV)/.installed: requirements.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "make deps: CPython 3.10+ is needed, found " + sys.version.split()[0])'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@touch $@

deps: $(VENV)/.installed
	@$(PY) tools/deps.py install

# The ESP32-faithful interpreter and mpy-cross from the pinned MicroPython source
# (tools/mpbuild.py, into build/esp32; needs gcc-multilib). Does nothing when up to
# date; a changed firmware file is re-frozen incrementally.
esp32: deps
	$(PY) tools/mpbuild.py build

test: deps esp32
	$(PY) -m pytest

# The firmware against a local Mosquitto (when installed), its MQTT messages next
# to the live timeline; a 40 s demo in real time unless SCENARIO=... is given.
run: deps
	$(PY) tools/run_demo.py $(if $(filter command line environment,$(origin SCENARIO)),--scenario $(SCENARIO)) $(RUN_ARGS)

bench: deps esp32
	$(PY) tools/bench.py

fuzz: deps
	$(PY) -m pytest tests/host/test_properties.py --fuzz $(or $(N),500)

deploy: deps
	@test -n "$(PORT)" || { echo "make deploy: set PORT, e.g. make deploy PORT=/dev/ttyUSB0"; exit 2; }
	$(PY) tools/deploy.py --port $(PORT) $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build
	find lib -mindepth 1 ! -name README.md ! -name .gitignore -exec rm -rf {} +
