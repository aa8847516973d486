#!/usr/bin/env bash
# The before/after table of docs/adapt.md, end to end (the protocol and seeds of docs/adapt.md):
# for each surface, simulate 24 scans of each style (seed 18) and the lab's 12 unlabelled foreign
# scans (seed 118); `stmwatch eval oneclick` with the shipped models on both styles (BEFORE);
# `stmwatch adapt` on the lab scans; `stmwatch eval oneclick` with the bundle on both styles (AFTER).
# Each evaluation runs twice: one click per class, and one per class at each bias polarity
# (--per-polarity; the JSON files named *_pp_*). One JSON file per row in OUT/json/, one summary
# table printed (and written to OUT/table.md).
#
#   scripts/adapt_table.sh [OUT]          # default OUT = adapt-table
#   SURFACES="si001h ge001" STMWATCH=".venv/bin/stmwatch" scripts/adapt_table.sh out
#   REPEATS=10 scripts/adapt_table.sh out   # each accuracy the mean over 10 random draws of the clicks
#   REUSE_BUNDLES=1 scripts/adapt_table.sh out   # keep OUT's bundles: new classifier settings, same bundles
#
# Scans already in OUT are reused (delete OUT to start afresh); a bundle is remade every run unless
# REUSE_BUNDLES=1 and it is there.
# CPU: about 10 minutes per surface on 2 free cores (OMP_NUM_THREADS=1 each step).
set -euo pipefail
OUT=${1:-adapt-table}
SURFACES=${SURFACES:-"si001h ge001 tio2110"}
STMWATCH=${STMWATCH:-stmwatch}
PYTHON=${PYTHON:-python3}
REPEATS=${REPEATS:-1}
REUSE_BUNDLES=${REUSE_BUNDLES:-0}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$OUT/json"

simulate() {  # style surface n seed folder
    if ! ls "$5"/*.sxm >/dev/null 2>&1; then
        $STMWATCH simulate --style "$1" --surface "$2" --n "$3" --seed "$4" --out "$5" >/dev/null
    fi
}

for S in $SURFACES; do
    simulate foreign "$S" 24 18 "$OUT/foreign_$S"
    simulate training "$S" 24 18 "$OUT/training_$S"
    simulate foreign "$S" 12 118 "$OUT/lab_$S"
    for STYLE in training foreign; do
        $STMWATCH eval oneclick --scans "$OUT/${STYLE}_$S" --surface "$S" --json --backend torch --repeats "$REPEATS" \
            > "$OUT/json/before_${STYLE}_$S.json"
        $STMWATCH eval oneclick --scans "$OUT/${STYLE}_$S" --surface "$S" --json --backend torch --repeats "$REPEATS" --per-polarity \
            > "$OUT/json/before_pp_${STYLE}_$S.json"
    done
    if [ "$REUSE_BUNDLES" != 1 ] || [ ! -f "$OUT/bundle_$S/bundle.json" ]; then
        rm -rf "$OUT/bundle_$S"
        $STMWATCH adapt --surface "$S" --scans "$OUT/lab_$S" --out "$OUT/bundle_$S" > "$OUT/json/adapt_$S.log" 2>&1
    fi
    for STYLE in training foreign; do
        $STMWATCH eval oneclick --scans "$OUT/${STYLE}_$S" --surface "$S" --models "$OUT/bundle_$S" --json \
            --backend torch --repeats "$REPEATS" > "$OUT/json/after_${STYLE}_$S.json"
        $STMWATCH eval oneclick --scans "$OUT/${STYLE}_$S" --surface "$S" --models "$OUT/bundle_$S" --json \
            --backend torch --repeats "$REPEATS" --per-polarity > "$OUT/json/after_pp_${STYLE}_$S.json"
    done
done

"$PYTHON" - "$OUT" $SURFACES <<'EOF' | tee "$OUT/table.md"
import json, sys
from pathlib import Path

out, surfaces = Path(sys.argv[1]), sys.argv[2:]


def accuracy(r):  # the mean over the draws of the clicks, when there were several
    return r.get("label_accuracy_mean", r["label_accuracy"])


print("| surface | style | scans clicked / scored | true defects | one-click label accuracy before → after "
      "| clicks at each polarity: accuracy before → after (clicks, scans scored) "
      "| detection F1 before → after (P / R after) | bundle |")
print("|---|---|---|---|---|---|---|---|")
for s in surfaces:
    for style in ("training", "foreign"):
        b = json.loads((out / "json" / f"before_{style}_{s}.json").read_text())
        a = json.loads((out / "json" / f"after_{style}_{s}.json").read_text())
        bp = json.loads((out / "json" / f"before_pp_{style}_{s}.json").read_text())
        ap = json.loads((out / "json" / f"after_pp_{style}_{s}.json").read_text())
        bundle = a.get("model_versions", {}).get("bundle", "")
        print(f"| {s} | {style} | {b['support_scans']} / {b['eval_scans']} | {b['true']} | "
              f"{accuracy(b):.3f} → {accuracy(a):.3f} | "
              f"{accuracy(bp):.3f} → {accuracy(ap):.3f} ({ap['clicks']}, {ap['eval_scans']}) | "
              f"{b['f1']:.3f} → {a['f1']:.3f} "
              f"({a['precision']:.3f} / {a['recall']:.3f}) | {bundle} |")
print()
for s in surfaces:
    for when in ("before", "after"):
        r = json.loads((out / "json" / f"{when}_foreign_{s}.json").read_text())
        per_class = r.get("per_class_accuracy_draws", r["per_class_accuracy"])  # over every draw, when there were several
        print(f"- {s} foreign {when}: " + ", ".join(f"{c} {v:.2f}" for c, v in per_class.items()))
EOF
