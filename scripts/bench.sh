#!/usr/bin/env bash
# Every benchmark in bench/, one after another; figures are printed and saved under bench/results/ (gitignored).
# Run on an otherwise idle machine: the A/B overhead benches compare medians of interleaved runs.
# Pass a benchmark's name to run only that one, e.g. scripts/bench.sh collect
source "$(dirname "$0")/_venv.sh" "test,torch,transformers,lightning"
benches=(collect tightloop sampler logparse analyze overhead trainer_overhead ui progress)
[ $# -gt 0 ] && benches=("$@")
for b in "${benches[@]}"; do
  echo "== bench/bench_$b.py"
  python "bench/bench_$b.py"
done
