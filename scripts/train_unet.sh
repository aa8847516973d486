#!/bin/sh
# The commands that made the shipped UNet weights (models/weights/unet.pt, db8b0402dc7b), run on
# one NVIDIA H100 (22 s per 400-step epoch). On a CPU machine use --device cpu --workers 0
# (about 2 minutes per 150 steps of batch 16 on 2 cores). Figures: models/weights/MODEL_CARD.md.
set -e
COMMON="--surfaces si001h ge001 tio2110 --val-scans 10 --patch 192 --batch 32 --device cuda --workers 7 --threads 2"
# 1. from scratch, 300 scans per surface
stmwatch -v train unet --out runs/B $COMMON --width 16 --depth 3 --scans 300 --epochs 12 --steps 400 --lr 2e-3 --seed 2
# 2. fine-tune on 500 new scans per surface
stmwatch -v train unet --out runs/C $COMMON --init runs/B/best.pt --scans 500 --epochs 16 --steps 400 --lr 1e-3 --seed 3
# 3. fine-tune on 500 more new scans per surface; the best epoch is copied to the shipped weights
stmwatch -v train unet --out runs/E $COMMON --init runs/C/best.pt --scans 500 --epochs 16 --steps 400 --lr 5e-4 --seed 4 \
    --weights models/weights/unet.pt
# selection scans (seeds 8 500 000+) and the held-out figures (seeds 7 000 000+)
python scripts/eval_segmentation.py --seed 8500000 --scans 12 --backend onnxruntime
python scripts/eval_segmentation.py --scans 20 --backend onnxruntime
