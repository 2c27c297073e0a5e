# Two commands do all the set-up on a fresh Debian 12 machine with Python 3.11 (as root):
#   make demo   - create .venv, install everything, tag speech in a recording (Silero VAD), plot it
#   make test   - the same set-up plus the system packages the tests need, then lint + tests
#   make train  - the same set-up, then train the shipped models again (minutes each)
#   make bench  - the test set-up, then every benchmark (one JSON object each; about 7 min)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Which torch to install, and from which index. On this project's machines pip finds a CPU
# wheel of torch 2.13.0 on disk; where pip sees only the public index, a plain torch
# requirement is a multi-GB CUDA build on Linux. Override both from the command line:
#   make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu      (CPU-only machine)
#   make demo TORCH_INDEX=https://download.pytorch.org/whl/cu128    (a CUDA 12.8 GPU machine)
#   make demo TORCH='torch==2.9.1'                                  (another version)
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
# OpenCV needs libGL; FFmpeg decodes; PortAudio captures microphones. The tests also run a
# private PulseAudio server as a virtual microphone, and a private mosquitto broker (its
# clients, and openssl for the TLS tests' certificates).
APT_PACKAGES := libgl1 libglib2.0-0 ffmpeg libportaudio2
TEST_APT_PACKAGES := $(APT_PACKAGES) pulseaudio pulseaudio-utils mosquitto mosquitto-clients openssl chromium chromium-driver

.PHONY: demo test train bench lint typecheck pytest system-deps venv clean

demo: system-deps $(STAMP)
	@mkdir -p out
	$(BIN)/streamer run audio_tagging --source recordings/speech_en --out out/demo.jsonl --metrics out/demo-metrics.json
	$(BIN)/streamer plot out/demo.jsonl -o out/demo-timeline.png --source recordings/speech_en
	@echo "outputs: out/demo.jsonl  timeline: out/demo-timeline.png  metrics: out/demo-metrics.json"

test: APT_PACKAGES := $(TEST_APT_PACKAGES)
test: system-deps $(STAMP) lint typecheck pytest

# Makes the shipped weights again (each script bounds its own run to under 10 minutes on
# 2 cores and prints its held-out figures as JSON). espeak-ng adds synthetic voices to the
# sound-event tagger's training speech.
train: APT_PACKAGES := $(APT_PACKAGES) espeak-ng
train: system-deps $(STAMP)
	$(BIN)/python pipelines/train_sound_events.py
	$(BIN)/python pipelines/eval_sound_events.py
	$(BIN)/python pipelines/train_motion.py
	$(BIN)/python pipelines/train_caption.py

# Every script in benchmarks/ prints one JSON object (figures, targets, met); the table of
# targets goes to stderr at the end. Sizes fit about 7 minutes on 2 cores (docs/performance.md).
# pulseaudio gives bench_live.py its virtual microphone.
bench: APT_PACKAGES := $(TEST_APT_PACKAGES)
bench: system-deps $(STAMP)
	$(BIN)/python benchmarks/run_all.py

lint: $(STAMP)
	$(BIN)/ruff check streamer pipelines tests scripts benchmarks
	$(BIN)/ruff format --check streamer pipelines tests scripts benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/python -m pytest

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[test,onnx,ray]'
	touch $(STAMP)

# Installs only what is missing, so it is quick (and needs no root) once done.
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info
