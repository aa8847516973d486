#!/usr/bin/env bash
# Reproduce docs/fewshot_table.md: the method's two 4-way 1-shot tables (same surface: Si(001):H;
# new surface: Ge(001)) for all six rows, plus the class-generation ablation, on simulator crops.
# CPU only; see docs/fewshot.md for the protocol, the timings and the discussion.
# Usage: scripts/fewshot_table.sh [WORK_DIR]   (crops and weights go to WORK_DIR, default fewshot-table)
set -euo pipefail
work="${1:-fewshot-table}"
stmwatch eval fewshot --table --work "$work" --per-class 1200 --train-episodes 1000 --episodes 100 \
    --jobs 2 --threads 1 --out-md docs/fewshot_table.md
