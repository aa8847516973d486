#!/bin/sh
# The commands that made the shipped UNet weights (models/weights/unet.pt), on a 2-core CPU
# (the same commands run on a GPU machine: --device auto picks CUDA). Figures: models/weights/MODEL_CARD.md.
set -e
# 1. 14 epochs (this run's augmentation still swapped forward/backward channels on left-right flips)
stmwatch -v train unet --out runs/unet2 --surfaces si001h ge001 tio2110 --scans 100 --val-scans 8 \
    --epochs 14 --steps 150 --batch 16 --width 8 --depth 3 --lr 3e-3 --noise 0.5 --seed 0 --threads 1
# 2. 4 more epochs with the current augmentation (target kept on the forward channel), same data,
#    continuing the learning-rate schedule as if the run had been planned for 18 epochs
mkdir -p runs/unet4 && cp runs/unet2/data.npz runs/unet2/last.pt runs/unet4/
stmwatch -v train unet --out runs/unet4 --surfaces si001h ge001 tio2110 --scans 100 --val-scans 8 \
    --epochs 18 --steps 150 --batch 16 --width 8 --depth 3 --lr 3e-3 --noise 0.5 --seed 0 --threads 1 --resume
# 3. ship the last epoch's weights (run 2's best validation F1 was not beaten on patches, so best.pt is not rewritten)
python -c "import torch; s = torch.load('runs/unet4/last.pt', weights_only=False); torch.save({k: s[k] for k in ('config', 'state_dict', 'meta')}, 'models/weights/unet.pt')"
python scripts/eval_segmentation.py --scans 20 --backend onnxruntime
