#!/usr/bin/env bash
# The GPU measurements in one run, for a bare GPU machine: Python with torch (CUDA) and numpy, no
# network, no FFCV, Ray or OmegaConf.  Within 8 minutes of wall time it runs
#   1. benchmarks/perf/training_gpu.py: ResNet-9 models/hour at K = 1, 2, 4, 8, 16 models per task
#      on the device data path (and the FFCV path where FFCV is installed), synthetic CIFAR-shaped data;
#   2. benchmarks/perf/regression_gpu.py: datamodels.fit at N = 50,000 on the GPU, time and FLOP/s;
# and writes every JSON under $OUT (default ./device-out), each naming the card, torch and the commit.
#
#   bash benchmarks/device.sh            # on the GPU machine
#   bash benchmarks/device.sh --smoke    # the same steps on CPU at tiny sizes, in seconds
#
# Environment: PYTHON (default python3), OUT, DATAMODELS_COMMIT (recorded where the copy has no .git).
set -uo pipefail
cd "$(dirname "$0")/.."
SMOKE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1
PY=${PYTHON:-python3}
OUT=${OUT:-./device-out}
mkdir -p "$OUT"
if [ -z "${DATAMODELS_COMMIT:-}" ]; then
    DATAMODELS_COMMIT=$(git rev-parse HEAD 2>/dev/null || echo unknown)
fi
export DATAMODELS_COMMIT
export PYTHONUNBUFFERED=1
started=$SECONDS
say() { echo "[device.sh +$((SECONDS - started))s] $*"; }

# Pure-Python wheels this run needs beyond torch and numpy, installed from the copy if present:
# none (the worker and both benchmarks import neither FFCV, Ray nor OmegaConf).
WHEELS=()
for wheel in "${WHEELS[@]}"; do
    "$PY" -m pip install --no-index --no-deps --quiet "$wheel" || say "could not install $wheel"
done

say "environment -> $OUT/environment.json"
"$PY" - "$OUT/environment.json" <<'EOF'
import importlib.util, json, os, platform, sys
import torch

def importable(name):
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False

info = {"card": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__, "cuda": torch.version.cuda, "commit": os.environ.get("DATAMODELS_COMMIT"),
        "python": platform.python_version(), "cpu_count": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "importable": {name: importable(name) for name in ("ffcv", "ray", "omegaconf", "filelock", "scipy")}}
with open(sys.argv[1], "w") as f:
    json.dump(info, f, indent=2)
print(json.dumps(info))
EOF
status=0
if [ "$SMOKE" = 1 ]; then
    say "training_gpu.py --smoke"
    "$PY" benchmarks/perf/training_gpu.py --smoke --out "$OUT/training_gpu.json" || status=1
    say "regression_gpu.py --smoke"
    "$PY" benchmarks/perf/regression_gpu.py --smoke --out "$OUT/regression_gpu.json" || status=1
else
    # 8 epochs per model (models/hour scales with 1/epochs; the JSON has seconds per epoch); --budget-s
    # stops starting new K's in time, and every K's figures are saved as soon as measured.
    say "training_gpu.py: device path (and ffcv if installed), K = 1, 2, 4, 8, 16"
    timeout 270 "$PY" benchmarks/perf/training_gpu.py --paths device,ffcv --ks 1,2,4,8,16 --epochs 8 \
        --budget-s 200 --out "$OUT/training_gpu.json" || { status=1; say "training_gpu.py failed or timed out"; }
    say "regression_gpu.py: datamodels.fit at N = 50,000"
    timeout 170 "$PY" benchmarks/perf/regression_gpu.py --num-train 50000 --num-targets 500 --num-models 20000 \
        --num-lambdas 20 --out "$OUT/regression_gpu.json" || { status=1; say "regression_gpu.py failed or timed out"; }
fi
say "done (status $status); files:"
ls -l "$OUT"
exit $status
