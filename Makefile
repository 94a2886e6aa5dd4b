# fmnist-serve: `make demo` runs the whole pipeline, `make test` the whole test suite.
# Each target does its own set-up through `install`, which does nothing when nothing changed.

PYTHON    ?= python3
VENV      ?= .venv
PY        := $(VENV)/bin/python
ARTIFACTS ?= artifacts
export ARTIFACTS
MODELS    ?=
EPOCHS    ?=
DEVICE    ?= auto
HOST      ?= 127.0.0.1
PORT      ?= 50051
METRICS_PORT ?= 8002
HTTP_PORT ?= 8000
# `make demo` (scripts/demo.py): DEMO_BUDGET is the mean seconds of training per architecture,
# evaluation included (35: 280 s for all 8); each gets its input side's share of it (scripts/demo.py
# PLAN_BY_SIDE: 96-pixel nets the most, 224-pixel ones the least), and is evaluated and
# parity-checked on its side's test subset (10,000 / 1,000 / 200 images). DEMO_LIMIT (training
# images per epoch), DEMO_BATCH (one batch size for all) and DEMO_TEST_IMAGES (one subset for all)
# override the table when set; DEMO_PRECISION=fp32 shows what a CPU without bf16 does.
DEMO_BUDGET ?= 35
DEMO_LIMIT  ?=
DEMO_BATCH  ?=
DEMO_TEST_IMAGES ?=
DEMO_PRECISION ?= auto
# `make bench-photos`: how many test images are sent as photos (and as raw pixels).
PHOTO_IMAGES ?= 2000

PROTOS    := $(shell find protos -name '*.proto')
GEN       := build/gen
DEPS      := $(VENV)/.deps-dev
SERVE_DEPS:= $(VENV)/.deps-serve
STUBS     := $(GEN)/.stamp
model_flags = $(if $(MODELS),--models $(MODELS))

.PHONY: help install install-serve dataset browser h2load stubs demo test train export serve \
        bench-train bench-export bench-serve bench-peer bench-density bench-variants report clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

install: $(DEPS) $(STUBS) dataset browser h2load  ## venv with the pinned training+serving+test stack, stubs, data, chromium, h2load

install-serve: $(SERVE_DEPS) $(STUBS)  ## a serving-only venv: no torch (use VENV=... for a new one)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# The .pth puts the repo and the generated stubs on the venv's path, so `python client/predict.py`
# and `python -m server` find them from any folder.
$(DEPS): requirements/dev.txt requirements/no-deps.txt requirements/train.txt requirements/serve.txt requirements/lock.txt | $(VENV)/bin/python
	$(PY) -m pip install -q -r requirements/dev.txt -c requirements/lock.txt
	$(PY) -m pip install -q --no-deps -r requirements/no-deps.txt -c requirements/lock.txt
	printf '%s\n%s\n' "$(CURDIR)" "$(CURDIR)/$(GEN)" > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/fmnist-serve.pth"
	touch $@ $(SERVE_DEPS)

$(SERVE_DEPS): requirements/serve.txt requirements/lock.txt | $(VENV)/bin/python
	$(PY) -m pip install -q -r requirements/serve.txt -c requirements/lock.txt
	printf '%s\n%s\n' "$(CURDIR)" "$(CURDIR)/$(GEN)" > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/fmnist-serve.pth"
	touch $@

stubs: $(STUBS)  ## generate the gRPC stubs from protos/ (rebuilt when a .proto changes)

$(STUBS): $(PROTOS) | $(SERVE_DEPS)
	rm -rf $(GEN) && mkdir -p $(GEN)
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=$(GEN) --pyi_out=$(GEN) --grpc_python_out=$(GEN) $(PROTOS)
	touch $@

dataset:  ## Fashion-MNIST from Debian's package when root on Debian (else: torchvision download later)
	@scripts/install-dataset.sh

browser:  ## Debian's chromium for the web page's browser tests, when root on Debian
	@scripts/install-chromium.sh

h2load:  ## Debian's h2load (nghttp2-client), the serving benchmarks' load generator, when root on Debian
	@scripts/install-debian-package.sh nghttp2-client /usr/bin/h2load "make bench-serve / bench-peer and their tests"

# The set-up runs inside the recipe (not as a prerequisite) so its time shows in the step table.
demo:  ## quick train of every architecture -> export -> serve -> classify samples/, step times
	@started=$$(date +%s.%N); $(MAKE) --no-print-directory install && \
	$(PY) scripts/demo.py $(model_flags) --started $$started --budget $(DEMO_BUDGET) \
	  $(if $(DEMO_LIMIT),--limit-train $(DEMO_LIMIT)) $(if $(DEMO_BATCH),--batch-size $(DEMO_BATCH)) \
	  $(if $(DEMO_TEST_IMAGES),--test-images $(DEMO_TEST_IMAGES)) --precision $(DEMO_PRECISION) \
	  --device $(DEVICE) --artifacts $(ARTIFACTS)

# TEST_JOBS pytest processes, each taking whole files (module fixtures are built once per file).
TEST_JOBS ?= 2
test: install  ## the whole test suite (TEST_JOBS=1: one process)
	$(PY) -m pytest $(if $(filter-out 1,$(TEST_JOBS)),-n $(TEST_JOBS) --dist loadfile)

train: install  ## train (MODELS="resnet18 lenet_bn" EPOCHS=3 to narrow)
	$(PY) -m trainer $(model_flags) $(if $(EPOCHS),--epochs $(EPOCHS)) --device $(DEVICE) --artifacts $(ARTIFACTS)

export: install  ## export every best.pt to artifacts/models/<arch>/<version>/model.onnx
	$(PY) -m exporter $(model_flags) --artifacts $(ARTIFACTS)

serve: install  ## serve every exported model: gRPC $(HOST):$(PORT), HTTP and the page on $(HTTP_PORT), /metrics on $(METRICS_PORT) (0: off)
	$(PY) -m server --models-dir $(ARTIFACTS)/models --host $(HOST) --port $(PORT) \
	  --http-port $(HTTP_PORT) --metrics-port $(METRICS_PORT) --device $(DEVICE)

bench-train: install  ## the seeds' training loop against ours, side by side
	$(PY) -m bench.train $(model_flags)

bench-export: install  ## onnxruntime throughput: folded vs unfolded vs PyTorch eager
	$(PY) -m bench.export $(model_flags)

# `make bench-serve` / `make bench-peer` (docs/benchmarks.md): BENCH_SECONDS per cell; MODELS
# (default lenet_bn resnet18); BENCH_WORKERS, fmnist-serve's --workers settings (default 1 auto).
BENCH_SECONDS ?= 5
BENCH_WORKERS ?= 1 auto
bench_flags = $(model_flags) --seconds $(BENCH_SECONDS) --workers $(BENCH_WORKERS)
bench-serve: install  ## fmnist-serve (gRPC and HTTP) vs in-process onnxruntime and a bare grpc.aio server (h2load), with 1 and auto workers; tracing off vs on (0.01, 1.0)
	$(PY) -m bench.serve $(bench_flags)

# The peers' venvs: MLServer from $(PYTHON); PyTriton from Debian's python3.11 (its bundled
# tritonserver links libpython3.11.so), whose venv module is Debian's python3.11-venv.
PEER_VENV ?= .venv-peer
TRITON_VENV ?= .venv-triton
$(PEER_VENV)/.deps: requirements/peer.txt
	$(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/pip install -q -r requirements/peer.txt
	touch $@
$(TRITON_VENV)/.deps: requirements/peer-triton.txt
	@scripts/install-debian-package.sh python3.11-venv /usr/lib/python3.11/ensurepip/__init__.py "make bench-peer (PyTriton's venv)"
	/usr/bin/python3.11 -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/pip install -q -r requirements/peer-triton.txt
	touch $@

bench-peer: install $(PEER_VENV)/.deps $(TRITON_VENV)/.deps  ## fmnist-serve vs MLServer 1.7 and Triton's core (PyTriton 0.7) over KServe v2
	$(PY) -m bench.peer $(bench_flags) --mlserver-python $(PEER_VENV)/bin/python \
	  --triton-python $(TRITON_VENV)/bin/python

bench-density: install  ## memory of --workers 1 2 4 with shared weights on vs off, and what sharing costs in img/s
	$(PY) -m bench.density --models-dir $(ARTIFACTS)/models --seconds $(BENCH_SECONDS)

bench-variants: install  ## precision variants (python -m exporter --variants int8) vs fp32: accuracy, agreement, img/s, size
	$(PY) -m bench.variants --artifacts $(ARTIFACTS) $(model_flags)

bench-photos: install  ## test images as 256-512 px RGB JPEG photos vs raw pixels, through the server
	$(PY) -m bench.photos $(model_flags) --images $(PHOTO_IMAGES)

# TEST_IMAGES=N measures each model on the first N test images (default: all 10,000).
report: install  ## static HTML report of $(ARTIFACTS) -> $(ARTIFACTS)/report/index.html
	$(PY) -m reporting --artifacts $(ARTIFACTS) $(if $(TEST_IMAGES),--test-images $(TEST_IMAGES))

# `make fuzz`: FUZZ_EXAMPLES times the ~2,000 cases `make test` runs, with a fresh random seed.
FUZZ_EXAMPLES ?= 25
.PHONY: fuzz soak
fuzz: install  ## fuzz decode and Classify (hypothesis), far longer than `make test` does
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest tests/server/test_fuzz.py -q

# `make profile-serve` (scripts/profile_serve.py): py-spy samples `python -m server` serving
# PROFILE_MODEL to 32 single-image callers (h2load), PROFILE_SECONDS per protocol; raw stacks in
# $(ARTIFACTS)/profile/.
PROFILE_MODEL ?= lenet_bn
PROFILE_SECONDS ?= 10
.PHONY: profile-serve
profile-serve: install  ## where a request's CPU goes in the server under load (v1, v2): per thread, top frames
	$(PY) scripts/profile_serve.py --model $(PROFILE_MODEL) --seconds $(PROFILE_SECONDS) \
	  --artifacts $(ARTIFACTS)

# `make soak`: SOAK_SECONDS to change the length; SOAK_MODELS=dir serves those models instead of
# a lenet_bn trained for it on synthetic data. SOAK_WORKERS workers over SOAK_CONNECTIONS
# connections, each replaced past SOAK_MAX_WORKER_RSS_MB (grpc.aio's own leak, grpc/grpc#43360,
# grows one process ~0.5 MiB a minute: SOAK_WORKERS=1 SOAK_MAX_WORKER_RSS_MB= soaks one process).
SOAK_SECONDS ?= 600
SOAK_WORKERS ?= 2
SOAK_CONNECTIONS ?= 4
SOAK_MAX_WORKER_RSS_MB ?= 135
soak: install  ## a real server under mixed traffic (10 min): per-minute figures, pass/fail
	$(PY) scripts/soak.py --seconds $(SOAK_SECONDS) $(if $(SOAK_MODELS),--models-dir $(SOAK_MODELS)) \
	  --workers $(SOAK_WORKERS) --connections $(SOAK_CONNECTIONS) \
	  $(if $(SOAK_MAX_WORKER_RSS_MB),--max-worker-rss-mb $(SOAK_MAX_WORKER_RSS_MB))

# `make attack` (scripts/attack.py): every hostile request of scripts/attacks/catalog.py at full
# size against a real `python -m server` (ATTACK_MODELS=dir serves those models instead of two
# trained for it on synthetic data); the table goes to the terminal and into docs/security.md.
ATTACK_MODELS ?=
.PHONY: attack
attack: install  ## every hostile request at full size against a real server: health latency, RSS, fds (docs/security.md)
	$(PY) scripts/attack.py $(if $(ATTACK_MODELS),--models-dir $(ATTACK_MODELS)) --docs docs/security.md

# `make fleet` (scripts/fleet.py): FLEET_REPLICAS `python -m server` replicas, each in its own
# network namespace (root and iproute2), driven from this host as a Kubernetes headless Service's
# clients do: steady load, SIGKILL, SIGTERM, a rolling model update, a cut and a slow link;
# FLEET_CALLS calls per scenario. Per-replica counts and p50/p99 (docs/serving.md).
FLEET_REPLICAS ?= 3
FLEET_CALLS ?= 5000
.PHONY: fleet
fleet: install  ## replicas on separate hosts (network namespaces, root): SIGKILL, SIGTERM, rolling update, link faults
	$(PY) scripts/fleet.py --replicas $(FLEET_REPLICAS) --calls $(FLEET_CALLS)

# `make gpu-check`: scripts/gpu_check.py proves every CUDA path in one run of at most 8 minutes
# (docs/gpu.md); DEVICE=cpu rehearses the same steps with tiny budgets in at most 5. WHEELS=dir
# installs the wheels in dir first (pip --no-index: a GPU host here has no network, so no
# `install` either); gpu-check.json and gpu-check.md go to GPU_CHECK_OUT. It runs with the venv's
# Python when there is one, else $(PYTHON) (a GPU image's own, with torch).
GPU_CHECK_OUT ?= artifacts/gpu-check/
WHEELS ?=
.PHONY: gpu-check
gpu-check:  ## prove every CUDA path on this GPU in <= 8 min (DEVICE=cpu: the CPU rehearsal)
	$(if $(wildcard $(PY)),$(PY),$(PYTHON)) scripts/gpu_check.py --device $(DEVICE) \
	  --out $(GPU_CHECK_OUT) $(if $(WHEELS),--wheels $(WHEELS)) $(model_flags)

clean:  ## remove generated stubs and caches (keeps the venv, data and artifacts)
	rm -rf $(GEN) .pytest_cache
