#!/usr/bin/env bash
# Table 1 with the paper's protocol (100 occlusions x 100 images per case, both splits) on the 2 x 1000 models
# trained to their end with the converging recipe (seed 0), once per FARM fill.
set -uo pipefail
cd "$(dirname "$0")/../.."
recipe='{"direct_connections": true, "dropout": 0.3, "lr_schedule": "cosine", "lr_warmup_epochs": 1, "early_stopping": {"patience": 6, "min_delta": 0.02}}'
for fill in evidence_weighted best_evidence; do
  OMP_NUM_THREADS=1 FARM_DATA_DIR=${FARM_DATA_DIR:-../shared/data} python -m farm_sweep.table1 \
    --out results/table1_converged/table1_$fill.md --work-dir results/table1_converged \
    --hidden-sizes 1000 1000 --epochs 40 --lr 1e-3 --ks 8 --losses mc --recipe "$recipe" --fill $fill \
    --protocol paper --num-occlusions 100 --images-per-occlusion 100 --seed 0 --device cpu
  cp results/table1_converged/table1.json results/table1_converged/table1_$fill.json
done
