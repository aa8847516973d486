#!/bin/sh
# The command that made the shipped UNet weights (models/weights/unet.pt), on a 2-core CPU.
# Same command on a GPU machine (--device auto picks CUDA). Figures: models/weights/MODEL_CARD.md.
set -e
stmwatch -v train unet --out runs/unet3 --surfaces si001h ge001 tio2110 --scans 150 --val-scans 8 \
    --epochs 10 --steps 150 --batch 16 --width 16 --depth 3 --lr 3e-3 --noise 0.5 --seed 0 --threads 1 \
    --weights models/weights/unet.pt
python scripts/eval_segmentation.py --scans 20 --backend onnxruntime
