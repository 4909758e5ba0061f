# The README's two commands: `make up` brings the lab up, `make test` runs
# every test. Both work as root on a fresh Debian 12 machine.
VENV   := .venv
PYTHON ?= python3
STAMP  := $(VENV)/.installed
# Ansible (ansible/) in a venv of its own: its pins need not agree with the lab's.
ANSIBLE_VENV  := .venv-ansible
ANSIBLE_STAMP := $(ANSIBLE_VENV)/.installed

.PHONY: up down status test test-unit bench-spawn bench-images

up: $(STAMP)
	$(VENV)/bin/datalab up

down: $(STAMP)
	$(VENV)/bin/datalab down

status: $(STAMP)
	$(VENV)/bin/datalab status

# Unit tests first (seconds), then the integration suite against a separate
# test lab that the fixtures bring up and tear down.
test: $(STAMP) $(ANSIBLE_STAMP)
	$(VENV)/bin/datalab install --test
	$(VENV)/bin/pytest -ra --durations=15 tests/unit tests/integration

test-unit: $(STAMP)
	$(VENV)/bin/pytest -ra tests/unit

bench-spawn: $(STAMP)
	$(VENV)/bin/python bench/spawn.py

bench-images: $(STAMP)
	$(VENV)/bin/python bench/images.py

$(ANSIBLE_STAMP): ansible/requirements.txt
	@./scripts/bootstrap-venv $(PYTHON) $(ANSIBLE_VENV)
	$(ANSIBLE_VENV)/bin/pip install -q -r ansible/requirements.txt
	@touch $@

$(STAMP): pyproject.toml client/pyproject.toml hub/pyproject.toml pipelines/pyproject.toml scoring/pyproject.toml model_registry/pyproject.toml images/constraints.txt
	@./scripts/bootstrap-venv $(PYTHON) $(VENV)
	PIP_CONSTRAINT=images/constraints.txt $(VENV)/bin/pip install -q -e '.[test]' -e ./client -e ./hub -e ./pipelines -e ./scoring -e './model_registry[gateway]'
	@touch $@
