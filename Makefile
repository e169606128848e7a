# Two commands on a fresh machine:
#   make demo   creates or updates .venv, installs, runs the main job: the shipped tiny judge, Flow-DPO, HTML reports
#   make test   creates or updates .venv, runs the whole test suite
#   make lint   ruff's lint and format checks (the settings are in pyproject.toml); CI runs it before the tests
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo demo-judge world-wan test lint bench clean

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -c constraints.txt -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) recipes/demo.py --output-dir outputs/demo

# Train the demo's judge again (recipes/demo_judge/, shipped in the repository).
demo-judge: $(STAMP)
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(PY) recipes/train_demo_judge.py --output-dir recipes/demo_judge

# Train the world's tiny Wan-2.1 again (VAE, then transformer + text encoder; recipes/world_wan/, shipped).
world-wan: $(STAMP)
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(PY) recipes/train_world_wan.py --output-dir recipes/world_wan

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q tests

# Only ruff is needed: the check does not import the package.
LINT_STAMP := $(VENV)/.lint-installed
$(LINT_STAMP): constraints.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt ruff
	touch $(LINT_STAMP)

lint: $(LINT_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) recipes/bench_reward.py --json outputs/bench_reward.json

clean:
	rm -rf $(VENV) outputs
