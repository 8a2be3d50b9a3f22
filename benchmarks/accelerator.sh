#!/usr/bin/env bash
# The README's accelerator figures, on one GPU or TPU chip: the sampler (VAR-d16 and VAR-d30, batch
# 64, bfloat16 and float32) and the training step (VAR-d16, batch 64, the recipe's bfloat16, tokens
# given and tokenizer inside, the first rematerialisation policy that fits), one JSON line each,
# appended to ${1:-.}/accelerator.jsonl.
# PYTHON names the interpreter (default: python).  Most important first, so that a run cut short by
# a time limit still has the headline figures.
set -u
out=$(realpath -m "${1:-.}")
mkdir -p "$out"
cd "$(dirname "$0")"
bench() { echo "+ $*" >&2; "${PYTHON:-python}" "$@" | tee -a "$out/accelerator.jsonl"; }
bench sample_speed.py --config var_d16 --batch 64 --repeats 5 --no-per-scale --dtype bfloat16
bench sample_speed.py --config var_d30 --batch 64 --repeats 3 --no-breakdown --dtype bfloat16
bench train_speed.py --config var_d16 --batch 64 --steps 10 --config.var.remat=auto
bench sample_speed.py --config var_d16 --batch 64 --repeats 5 --no-per-scale
bench sample_speed.py --config var_d30 --batch 64 --repeats 3 --no-breakdown
bench train_speed.py --config var_d16 --batch 64 --steps 10 --images --config.var.remat=auto
