#!/bin/bash
# usage: benchmarks/identity_hashes.sh VENV_BIN OUTDIR
# Runs score and three prunes on the bundled teacher and prints the sha256 of every output: the same
# commands on two versions of minitron must print the same hashes (BENCHMARKS.md, "Restructuring").
set -e
B=$(cd "$1" && pwd); O=$2; rm -rf "$O"; mkdir -p "$O"; cd "$O"
A=$($B/python -c "import minitron.assets as a;print(a.ASSETS)")
export OMP_NUM_THREADS=1
$B/minitron score demo-teacher --data $A/demo/corpus/train.txt --samples 8 --seq-len 128 --batch-size 4 --device cpu --dtype fp32 --no-streaming --out s >/dev/null 2>&1 || $B/minitron score demo-teacher --data $A/demo/corpus/train.txt --samples 8 --seq-len 128 --batch-size 4 --device cpu --dtype fp32 --out s
$B/minitron prune demo-teacher --scores s --hidden-size 192 --ffn-size 384 --mamba-heads 12 --mamba-head-dim 12 --attention-heads 4 --kv-heads 1 --num-layers 8 --out p1 >/dev/null
$B/minitron prune demo-teacher --scores s --hidden-size 160 --drop-layers 1,3 --out p2 >/dev/null
$B/minitron prune demo-teacher --scores s --memory-budget 4913904B --context-length 1024 --memory-dtype bf16 --engine none --search hidden_size=128:256:32 --search ffn_size=256:512:64 --search mamba_heads=8:16:4 --data $A/demo/corpus/heldout.txt --seq-len 128 --proxy-samples 2 --shortlist 3 --candidates 3 --keep-layer-types attention=1 --device cpu --out p3 >/dev/null
for f in s/scores.safetensors p1/model*.safetensors p2/model*.safetensors p3/model*.safetensors p1/config.json p2/config.json p3/config.json; do sha256sum $f; done
