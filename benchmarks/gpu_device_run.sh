#!/usr/bin/env bash
# The GPU table on the lent GPU machine, in one call. Nothing is installed there beyond torch,
# transformers, onnx and onnxruntime (CPU build), and nothing can be downloaded, so:
#   here, once:   bash benchmarks/gpu_wheels.sh      # the decode libraries' wheels into .whl/ (ignored)
#   device tool:  run(command="bash benchmarks/gpu_device_run.sh", carry=[".whl"], timeout_s=600)
# mictag runs from the copy of the repository (PYTHONPATH), not installed. The carried wheels go to
# /tmp/site ($SITE) without their dependencies; without them the scan row is skipped, saying why.
# What it writes goes to $OUT (else benchmarks/results): the JSON, the log, nvidia-smi, the environment.
# Arguments go to gpu.py (e.g. --smoke --device cuda: the tiny model through the GPU code paths).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/results}
py=${PYTHON:-python3}
wheels=${WHEELS:-.whl}
site=${SITE:-/tmp/site}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MICTAG_HOME=${MICTAG_HOME:-/tmp/mictag-home}
if compgen -G "$wheels/*.whl" >/dev/null; then
    rm -rf "$site"
    if "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$wheels"/*.whl; then
        export PYTHONPATH="$PYTHONPATH:$site"
    else
        echo "installing the carried wheels failed: the scan row will be skipped" >&2
    fi
fi
{ nvidia-smi || echo "no nvidia-smi"; } >"$out/nvidia-smi.txt" 2>&1
"$py" - <<'PY' 2>&1 | tee "$out/environment.txt"
import importlib, sys
print("python", sys.version.split()[0], sys.executable)
for name in ("torch", "triton", "transformers", "onnx", "onnxruntime", "tensorrt", "soundfile", "soxr", "av",
             "click", "mutagen", "openvino", "mictag"):
    try:
        print(f"{name:12s} {getattr(importlib.import_module(name), '__version__', '?')}")
    except Exception as exc:
        print(f"{name:12s} missing ({type(exc).__name__}: {exc})")
try:
    import torch
    print("cuda", torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name(0))
    import onnxruntime
    print("onnxruntime providers", onnxruntime.get_available_providers())
except Exception as exc:
    print("check failed:", exc)
PY
timeout -k 10 "${GPU_TIMEOUT:-465}" "$py" benchmarks/gpu.py --out-dir "$out" "$@" 2>&1 | tee "$out/gpu.log"
