#!/usr/bin/env bash
# One call on an accelerator host (e.g. the GPU machine lent to some of our sessions, with
# jax[cuda], flax, optax, chex, tqdm, matplotlib and pytest preinstalled), within a time budget:
#   1. the rules' tests (jit, vmap, no retracing, bad inputs) on the accelerator,
#   2. the aggregator benchmark's figures there (nnmjax bench),
#   3. the Fashion-MNIST Table 2 grid into its own run directory, --jobs worker processes,
#      resumable: records and checkpoints written so far are packed at the end whatever
#      happened, so a second call carrying them back in goes on where this one stopped.
# Everything lands under $OUT in at most 6 files (the device tool returns 8): logs, bench JSON,
# and fashion_gpu.tar.gz (the run directory, the workers' logs included).
#
# Before the call, here:   mkdir -p data && cp /usr/share/datasets/fashion-mnist/*.gz data/
#                          (data/ is git-ignored: name it in the call's carry)
# To go on from an earlier call, unpack its fashion_gpu.tar.gz into out/fashion_gpu (carry
# that too). Afterwards, here: tar xzf fashion_gpu.tar.gz -C experiments/results/fashion_mnist_table2_gpu
#
# Env: BUDGET_S (default 540: seconds for the whole script), JOBS (default 6), SMOKE=1 (a
# few steps of one group: to try the script on a CPU).
set -uo pipefail
OUT=${OUT:-out/gpu_session}
BUDGET_S=${BUDGET_S:-540}
JOBS=${JOBS:-6}
RUN_DIR=out/fashion_gpu
CONFIG=experiments/paper/fashion_mnist_table2.toml
export NNMJAX_DATA_DIR=${NNMJAX_DATA_DIR:-$PWD/data} PYTHONUNBUFFERED=1
start=$(date +%s)
left() { echo $(( BUDGET_S - ($(date +%s) - start) )); }
mkdir -p "$OUT" "$RUN_DIR"

export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # this checkout's nnmjax, nothing installed
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
  python3 -c "import jax; print(jax.__version__, jax.devices())"; nproc; } > "$OUT/machine.txt" 2>&1

SMOKE_SET=()
if [ "${SMOKE:-0}" = 1 ]; then
  SMOKE_SET=(--set steps=4 --set eval_every=2 --set "seeds=[1]" --set "attacks=['sign_flipping']"
             --set "rules=['cwtm']")
fi

# 1. tests of the rules on the accelerator (a tenth of the budget at most)
if [ "${SMOKE:-0}" != 1 ]; then
  timeout $(( BUDGET_S / 10 )) python3 -m pytest -q -x -p no:cacheprovider \
    tests/test_aggregators.py tests/test_preaggregators.py tests/test_rules.py \
    > "$OUT/tests.log" 2>&1
  echo "tests rc=$?" >> "$OUT/machine.txt"
  # 2. benchmark figures (a fifth of the budget at most)
  timeout $(( BUDGET_S / 5 )) python3 -m nnmjax.cli bench --budget 1 --out "$OUT/bench-gpu.json" \
    > "$OUT/bench.log" 2>&1
  echo "bench rc=$?" >> "$OUT/machine.txt"
fi

# 3. the grid, until 40 s before the budget ends (checkpoints every 20 s)
timeout --signal=INT $(( $(left) - 40 )) python3 -m nnmjax.cli run "$CONFIG" --out "$RUN_DIR" --jobs "$JOBS" \
  --checkpoint-every 20 "${SMOKE_SET[@]}" > "$OUT/grid.log" 2>&1
echo "grid rc=$? after $(( $(date +%s) - start )) s" >> "$OUT/machine.txt"
sleep 2
tar czf "$OUT/fashion_gpu.tar.gz" -C "$RUN_DIR" .
ls "$RUN_DIR/runs" 2>/dev/null | wc -l | sed 's/^/records: /' >> "$OUT/machine.txt"
cat "$OUT/machine.txt"
