# Verbs for the project. `make run` and `make test` are the README's two commands.
SHELL := /bin/bash
PY := .venv/bin/python

.PHONY: setup setup-dev run stop test test-fast lint audit archive bench smoke

setup:
	scripts/setup.sh serve

setup-dev:
	scripts/setup.sh dev

# Sets up, starts TorchServe on model_store/enhancer.pt (waits until READY), then the page on :5000.
run:
	scripts/setup.sh serve
	$(PY) -m scripts.serve start
	$(PY) -m scripts.page start

stop:
	$(PY) -m scripts.page stop
	$(PY) -m scripts.serve stop

archive: setup
	$(PY) -m scripts.archive

# Enhances a generated photo through the running server (make run) and checks the output sizes.
smoke:
	$(PY) -m scripts.serve smoke

# Engine vs naive baseline vs TorchServe end to end; prints the table BENCHMARKS.md records.
bench: setup
	$(PY) -m scripts.bench

# Every test: engine, page, TorchServe, Triton and the browser end to end (what CI runs).
test: setup-dev
	$(PY) -m pytest

# The inner loop: the hermetic tests only (no server, no browser, no training runs); a few minutes.
test-fast: setup-dev
	$(PY) -m pytest -m "not e2e and not train"

# Supply chain (CI runs it): prints TorchServe's bundled Netty, checks that config.properties binds
# loopback only, and runs pip-audit over the serving path's packages; fails on a known
# vulnerability, warns (and passes) when PyPI's advisory service cannot be reached.
audit: setup-dev
	$(PY) -m scripts.ops.audit

lint: setup-dev
	.venv/bin/ruff check handlers frontend scripts deploy tests
	.venv/bin/ruff format --check handlers frontend scripts deploy tests

# -- Triton and Docker (README "Scaling out") ------------------------------------------------------
.PHONY: setup-triton triton setup-ray ray ray-stop docker docker-cuda
TRITON_ARGS ?=
IMAGE ?= image-enhancer

# PyTriton (its wheel bundles Triton Inference Server) and tritonclient, on top of `make setup`.
setup-triton: setup
	$(PY) -c "import pytriton, tritonclient.http" 2>/dev/null || $(PY) -m pip install --quiet -e '.[triton]'

# Triton serving model_store/enhancer.pt on 127.0.0.1:8000 (gRPC 8001, metrics 8002) until Ctrl-C;
# e.g. make triton TRITON_ARGS="--model runs/x/enhancer.pt --http-port 9000 --max-batch-size 8".
triton: setup-triton
	$(PY) -m scripts.triton_serve $(TRITON_ARGS)

# Ray Serve (README "Ray Serve"): a local single-node Ray cluster on this machine's cores, two
# replicas of model_store/enhancer.pt, TorchServe's HTTP API on 127.0.0.1:8000, until Ctrl-C or
# make ray-stop; e.g. make ray RAY_ARGS="--replicas 4 --num-cpus 8 --port 9000".
RAY_ARGS ?= --replicas 2

setup-ray:
	scripts/setup.sh ray

ray: setup-ray
	$(PY) -m scripts.ray_serve $(RAY_ARGS)

ray-stop:
	$(PY) -m scripts.ray_serve stop

docker:
	docker build -t $(IMAGE):cpu .

docker-cuda:
	docker build --build-arg VARIANT=cuda -t $(IMAGE):cuda .

# -- Train, export, evaluate (README "Train, export, evaluate") -----------------------------------
.PHONY: train finetune train-tiny export evaluate
.PHONY: train-clean train-clean-status train-clean-snapshot train-restore train-restore-status
.PHONY: train-restore-snapshot
.PHONY: sheets
.PHONY: train-gan train-gan-status train-gan-stop
DATA ?= ../shared/data
RUN ?= runs/default
EVAL_SETS ?= $(DATA)/eval/set5 $(DATA)/eval/set14 $(DATA)/eval/b100 $(DATA)/eval/kodak24

# The shipped default's recipe (scripts/train.py's defaults), at low priority: hours on 2 CPU cores.
train: setup-dev
	nice -n 10 $(PY) -m scripts.train --out $(RUN) --data $(DATA)/train $(TRAIN_ARGS)

# The long runs of issue 8 (runs/clean/README.md, runs/restore/README.md): start or resume one in
# the background at nice 19 in ../runs/<name>, seeded from the committed runs/<name>/ snapshot when
# that is further along (restore, the first time: warm-started from the clean run's weights). Each
# survives the session; snapshot it (into runs/<name>/, for committing) before the session ends.
train-clean train-restore: train-%: setup-dev
	scripts/train_run.sh $* start

train-clean-status train-restore-status: train-%-status:
	scripts/train_run.sh $* status

train-clean-snapshot train-restore-snapshot: train-%-snapshot:
	scripts/train_run.sh $* snapshot

# NoGAN sharpening of the restore model (issue 11; scripts/train_gan.py): critic pretraining, then a
# short adversarial phase with the pixel loss kept, in the background at nice 19 in ../runs/gan
# ($$RUN_DIR), resumed by the next start; about an hour on one shared CPU core ($$MINUTES caps it).
train-gan: setup-dev
	scripts/train_gan.sh start

train-gan-status train-gan-stop: train-gan-%:
	scripts/train_gan.sh $*

# Stage 2 of the shipped default: fine-tune $(RUN)/model.pth with larger crops and more JPEG.
finetune: setup-dev
	nice -n 5 $(PY) -m scripts.train --out runs/stage2 --init-weights $(RUN)/model.pth --data $(DATA)/train \
		--epochs 32 --sizes 64,64,80 --lr 2e-4 --degrade p_jpeg=0.9 --keep-every 4 --seed 1 $(TRAIN_ARGS)

# Seconds: a tiny model on CPU, to check the pipeline.
train-tiny: setup-dev
	$(PY) -m scripts.train --out runs/tiny --data $(DATA)/train --nf 8,16 --blocks 1,1 --epochs 2 \
		--iters 4 --bs 4 --sizes 16 --val-every 4

# Trace $(RUN)/model.pth into model_store/enhancer.pt + card; proves the trace and measures seams.
export: setup-dev
	$(PY) -m scripts.export --weights $(RUN)/model.pth --out model_store/enhancer.pt --tile 256 \
		--overlap auto --photos $(DATA)/train/wiki $(DATA)/train/skimage --check-photos 3
	# the clean/restore family shares one overlap: re-measure both, record it in both cards
	$(PY) -m scripts.overlap --every 3 --check 3 --check-side 384 --write-card

# PSNR/SSIM tables (bicubic, real-world and heavy tracks) and the colour check, through the engine;
# stores them in the card.
evaluate: setup-dev
	$(PY) -m scripts.evaluate --model model_store/enhancer.pt --sets $(EVAL_SETS) --scales 2 4 \
		--out runs/eval.md --json runs/eval.json --write-card

# Contact sheets to look at (bicubic | model | original, with a 4x zoomed crop): Kodak24 x2, every
# track, into runs/sheets/.
sheets: setup-dev
	$(PY) -m scripts.evaluate --model model_store/enhancer.pt --sets $(DATA)/eval/kodak24 --scales 2 \
		--sheets runs/sheets --out runs/sheets/eval.md
