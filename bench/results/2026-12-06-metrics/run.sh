#!/bin/sh
# handoff-bench with and without `handoffctl run --metrics` scraped every
# 100 ms, interleaved (off, on, off, on, ...), three runs each (a run whose
# verdict fails is kept, not stopped on: its JSON says why); from the
# repository root after
#   cargo build --release --examples -p handoff && cargo build --release -p handoffctl -p handoff-bench
set -eu
out="$(dirname "$0")"
common="--netns --mode both --upgrades 20 --idle-upgrades 0 --control-restarts 1 --json"
for run in 1 2 3; do
  ./target/release/handoff-bench $common > "$out/off-run$run.json" || true
  ./target/release/handoff-bench $common --scrape-metrics-ms 100 > "$out/scrape100-run$run.json" || true
done
