# make demo       as root: scripts/demo, a throw-away Slurm cluster on 127.0.0.1 (slurmctld + 4 slurmd)
#                 whose nodes are simulated GPUs checked by gpuhc; left running
# make demo-down  stop it
# make test       the whole test suite (scripts/test), the real-Slurm tests included when root

DEMO_DIR ?= /tmp/gpuhc-demo
PYTHON ?= $(shell [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)

.PHONY: demo demo-down test

demo:
	DEMO_DIR=$(DEMO_DIR) scripts/demo

demo-down:
	$(PYTHON) scripts/devcluster.py down --dir $(DEMO_DIR)

test:
	scripts/test
