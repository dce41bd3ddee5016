#!/usr/bin/env bash
# Creates the peers' virtual environments (never dependencies of alignjax), outside the repo:
#   $ALIGNJAX_BENCH_VENVS/trl    CPU torch 2.13.0, transformers 5.23.0, TRL 1.16.0
#   $ALIGNJAX_BENCH_VENVS/tunix  google-tunix 0.1.7 (pins its own jax)
# The benchmark scripts find them there (or take --trl_python / --hf_python / --tunix_python).
set -euo pipefail
VENVS="${ALIGNJAX_BENCH_VENVS:-/tmp/alignjax_bench_venvs}"
mkdir -p "$VENVS"
if [ ! -x "$VENVS/trl/bin/python" ]; then
  python3 -m venv "$VENVS/trl"
  "$VENVS/trl/bin/pip" install -q --upgrade pip
  # CPU torch first, so that nothing pulls the CUDA build (the pinned version resolves to the
  # machine's local CPU wheel; the PyTorch index is not reachable from these machines).
  "$VENVS/trl/bin/pip" install -q torch==2.13.0
  "$VENVS/trl/bin/pip" install -q transformers==5.23.0 trl==1.16.0 datasets accelerate numpy
fi
if [ ! -x "$VENVS/tunix/bin/python" ]; then
  python3 -m venv "$VENVS/tunix"
  "$VENVS/tunix/bin/pip" install -q --upgrade pip
  "$VENVS/tunix/bin/pip" install -q google-tunix==0.1.7
fi
echo "peer venvs ready under $VENVS"
