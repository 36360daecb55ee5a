# make demo       as root: a throw-away Slurm cluster on 127.0.0.1 (slurmctld + 4 slurmd), left running
# make demo-down  stop it
# make test       the whole test suite (scripts/test), the real-Slurm tests included when root

DEMO_DIR ?= /tmp/gpuhc-demo
DEMO_NODES ?= 4
PYTHON ?= $(shell [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)
PROLOG := $(wildcard $(CURDIR)/slurm/prolog.d/50-gpuhc)
EPILOG := $(wildcard $(CURDIR)/slurm/epilog.d/50-gpuhc)
# slurmd gives prologs no PATH: put the venv's gpuhc first, as if installed in /usr/local/bin
DEMO_ENV := PATH=$(CURDIR)/.venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

.PHONY: demo demo-down test

demo:
	scripts/install-slurm
	scripts/setup-venv
	.venv/bin/python scripts/devcluster.py up --dir $(DEMO_DIR) --nodes $(DEMO_NODES) --env $(DEMO_ENV) \
	    $(if $(PROLOG),--prolog $(PROLOG)) $(if $(EPILOG),--epilog $(EPILOG))
	SLURM_CONF=$(DEMO_DIR)/etc/slurm.conf sinfo
	@echo "Stop it: make demo-down"

demo-down:
	$(PYTHON) scripts/devcluster.py down --dir $(DEMO_DIR)

test:
	scripts/test
