#!/usr/bin/env bash
# How the speed figures scale with the scan size (docs/performance.md): preprocessing vs one UNet
# pass, the UNet backends (one flip) and scan closed -> overlay published, for 256², 512², 1024²
# scans at 0.125 nm per scan pixel (Si(001):H's 0.1 nm model pixels: 320², 640², 1280²).
# Writes one JSON line per figure to stdout; ~5 minutes on 2 cores.
set -euo pipefail
for px in 256 512 1024; do
  nm=$(python3 -c "print($px * 0.125)")
  echo "{\"size\": $px, \"preprocess\": $(stmwatch bench preprocess --pixels "$px" --range-nm "$nm" --repeat 3 --json)}"
  echo "{\"size\": $px, \"segment\": $(stmwatch bench segment --size "$px" --flips 1 --repeat 2 --json)}"
  echo "{\"size\": $px, \"pipeline\": $(stmwatch bench pipeline --pixels "$px" --scans 3 --json)}"
done
