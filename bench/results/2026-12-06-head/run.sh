#!/bin/sh
# The session's closing measurements, from the repository root after
#   cargo build --release --workspace --bins --examples
# as root (--netns). Each run's JSON is kept, a failed verdict included.
set -u
out="$(dirname "$0")"
bench=./target/release/handoff-bench
for run in 1 2 3; do
  # The main job, defaults (kvd and echod, fresh builds, 800 requests/s).
  $bench --upgrades 20 --json > "$out/default-run$run.json" || true
  # Prometheus watching: the same, in a network namespace, with and without
  # --metrics scraped every 100 ms, interleaved.
  common="--netns --mode both --upgrades 20 --idle-upgrades 0 --control-restarts 1 --json"
  $bench $common > "$out/metrics-off-run$run.json" || true
  $bench $common --scrape-metrics-ms 100 > "$out/metrics-scrape100-run$run.json" || true
  # The foreign Python daemon under --protocol systemd.
  $bench --mode foreign --upgrades 20 --json > "$out/foreign-run$run.json" || true
  # Replacing handoffctl itself under load, the kernel as a witness.
  $bench --mode both --upgrades 0 --reexecs 20 --idle-reexecs 0 --idle-upgrades 0 --netns --json \
    > "$out/reexec-netns-run$run.json" || true
done
