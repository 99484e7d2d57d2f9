#!/usr/bin/env bash
# What runlens costs and records on a real NVIDIA GPU, as one table (see bench/gpu_check.py; needs torch with CUDA).
exec "${PYTHON:-python3}" "$(dirname "$0")/../bench/gpu_check.py" "$@"
