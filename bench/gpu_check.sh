#!/usr/bin/env bash
# The GPU check, one script: device info; the CUDA tests; the reference notebook loop vs a
# solo bnstudy run vs fused groups (bench/bench_fused.py); the default study end to end;
# then a short table. Every step is capped with `timeout`; on an H100 the whole script
# takes under 8 minutes. Full log and per-step outputs go to LOG_DIR.
#
#   PYTHONPATH=. bash bench/gpu_check.sh [LOG_DIR]      (default LOG_DIR: bench/logs/<date>)
#
# Run from the repository root, with the dataset in data/fashion-mnist/. Needs no network
# and no pip: python3 with torch, torchvision, pandas, seaborn, joblib, tqdm, pytest.
# PYTHON=... picks another interpreter (e.g. PYTHON=.venv/bin/python here).
# Without CUDA it runs the same steps as a short CPU trial: small epochs and data slices,
# so the figures check the script, not the speed.
set -uo pipefail
cd "$(dirname "$0")/.."
LOG_DIR=${1:-bench/logs/$(date +%Y-%m-%d)}
PY=${PYTHON:-python3}
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$LOG_DIR"
exec > >(tee "$LOG_DIR/gpu_check.log") 2>&1
STUDY_DIR="$LOG_DIR/default_study"

if timeout 20 "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  MODE=cuda
  # fused groups: the default study's group (3 lrs x 3 seeds = 9 runs) and a GPU-filling one
  BENCH_ARGS=(--device cuda --epochs 2 --group-size 9 0)
  SWEEP_ARGS=(--device cuda)
  # with the fixed caps (20 + 10 + 20 + 15 s) the caps add up to 465 s, under 8 minutes
  T_TESTS=80 T_BENCH=180 T_SWEEP=140
else
  MODE=cpu
  BENCH_ARGS=(--device cpu --epochs 2 --group-size 3 --limit-train 5000 --limit-test 2000
              --reference-epochs 1 --threads 1)
  SWEEP_ARGS=(--device cpu --set epochs=1 --set limit_train=2000 --set limit_test=1000
              --set precise_bn_samples=512 --set "grid.seed=[0]")
  T_TESTS=100 T_BENCH=300 T_SWEEP=200
fi

step() { echo; echo "=== $* ($(date +%T))"; }
seconds_since() { "$PY" -c "import sys, time; print(f'{time.time() - float(sys.argv[1]):.1f}')" "$1"; }

step "1/4 device ($MODE mode), log in $LOG_DIR"
command -v nvidia-smi >/dev/null && timeout 10 nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv
timeout 20 "$PY" - <<'EOF'
import os, platform, torch
print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
if torch.cuda.is_available():
    free, total = torch.cuda.mem_get_info()
    print(f"GPU: {torch.cuda.get_device_name()}, {free / 2**30:.1f} of {total / 2**30:.1f} GiB free")
EOF
git rev-parse --short HEAD 2>/dev/null && git status --short | head -20

step "2/4 CUDA tests: pytest -m cuda"
timeout "$T_TESTS" "$PY" -m pytest -q -m cuda tests 2>&1 | tee "$LOG_DIR/pytest_cuda.txt"
TESTS_RC=${PIPESTATUS[0]}
[ "$TESTS_RC" = 5 ] && TESTS_RC=0  # 5: no test selected (nothing marked cuda collected), not a failure

step "3/4 reference loop vs solo vs fused: bench/bench_fused.py ${BENCH_ARGS[*]}"
timeout "$T_BENCH" "$PY" bench/bench_fused.py "${BENCH_ARGS[@]}" > "$LOG_DIR/bench_fused.json"
BENCH_RC=$?
cat "$LOG_DIR/bench_fused.json"

step "4/4 the default study end to end: bnstudy sweep experiments/default.toml ${SWEEP_ARGS[*]}"
rm -rf "$STUDY_DIR"  # a leftover study would be resumed, not timed
START=$(date +%s.%N)
timeout "$T_SWEEP" "$PY" -m bnstudy sweep experiments/default.toml --out "$STUDY_DIR" "${SWEEP_ARGS[@]}"
SWEEP_RC=$?
STUDY_SECONDS=$(seconds_since "$START")
timeout 15 "$PY" -m bnstudy status "$STUDY_DIR"

step "summary"
"$PY" - "$LOG_DIR/bench_fused.json" "$STUDY_SECONDS" "$SWEEP_RC" "$T_SWEEP" "$TESTS_RC" "$BENCH_RC" <<'EOF' | tee "$LOG_DIR/summary.txt"
import json, sys
path, study_seconds, sweep_rc, sweep_cap, tests_rc, bench_rc = sys.argv[1:]
try:
    bench = json.load(open(path))
except (OSError, ValueError):
    bench = None
fmt = lambda x, spec=".3f": "n/a" if x is None else format(x, spec)
print(f"device            {bench['device'] if bench else 'n/a (bench failed)'}")
print(f"cuda tests        {'passed' if tests_rc == '0' else f'FAILED (exit {tests_rc})'}")
if bench:
    c = bench["config"]
    print(f"config            {c['variant']} {c['optimizer']} lr {c['lr']} bs {c['batch_size']}, "
          f"{c['epochs']} epochs, limit_train {c['limit_train']}, limit_test {c['limit_test']}")
    print(f"{'engine':18}{'s/epoch-run':>12}{'train s/epoch-run':>19}{'vs reference':>14}{'vs solo':>9}")
    rows = [("reference", bench.get("reference"), None, None),
            ("solo", bench["solo"], bench["speedup"]["solo_vs_reference"], None)]
    rows += [(f"fused G={f['group_size']}", f, bench["speedup"][f"fused{f['group_size']}_vs_reference"],
              bench["speedup"][f"fused{f['group_size']}_vs_solo"]) for f in bench["fused"]]
    for name, r, vs_ref, vs_solo in rows:
        if r is None:
            continue
        print(f"{name:18}{fmt(r['seconds_per_epoch_run']):>12}{fmt(r['train_seconds_per_epoch_run']):>19}"
              f"{fmt(vs_ref, '.1f') + 'x' if vs_ref else 'n/a':>14}{fmt(vs_solo, '.2f') + 'x' if vs_solo else '':>9}")
    for f in bench["fused"]:
        if "peak_memory_mib" in f:
            print(f"fused G={f['group_size']} memory  peak {f['peak_memory_mib']:.0f} MiB incl. data, "
                  f"max_group_size's estimate {f['estimated_memory_mib']:.0f} MiB")
else:
    print(f"bench             FAILED (exit {bench_rc})")
state = "done" if sweep_rc == "0" else f"TIMED OUT at {sweep_cap} s" if sweep_rc == "124" else f"FAILED (exit {sweep_rc})"
print(f"default study     {study_seconds} s end to end ({state})")
EOF
[ "$TESTS_RC" = 0 ] && [ "$BENCH_RC" = 0 ] && [ "$SWEEP_RC" = 0 ]
