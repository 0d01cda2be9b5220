#!/usr/bin/env bash
# Create (or update) the benchmark environment: Keras 3 + JAX, TensorFlow (converters only),
# tf2onnx, onnx, ONNX Runtime, LiteRT, matplotlib, psutil, and bridge from this checkout.
#
#   benchmarks/setup_env.sh                 # -> benchmarks/.venv
#   BENCH_VENV=/path benchmarks/setup_env.sh
#   PYTHON=python3.11 benchmarks/setup_env.sh
#
# Idempotent: an existing venv is reused; pip only installs what is missing or different, and
# the closing import check runs every time.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
VENV="${BENCH_VENV:-$HERE/.venv}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating $VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi

echo "== installing benchmark requirements"
"$VENV/bin/python" -m pip install -q -r "$HERE/requirements.txt"
echo "== installing bridge (editable) from $ROOT"
# (setuptools prints pages of deprecation notes for editable installs: kept in a log)
if ! "$VENV/bin/python" -m pip install -q -e "$ROOT[tune]" > "$VENV/bridge-install.log" 2>&1; then
  cat "$VENV/bridge-install.log"
  exit 1
fi

echo "== checking imports"
KERAS_BACKEND=jax TF_CPP_MIN_LOG_LEVEL=3 "$VENV/bin/python" - <<'PY'
import importlib
versions = {}
for name in ["keras", "jax", "tensorflow", "tf2onnx", "onnx", "onnxruntime", "ai_edge_litert",
             "matplotlib", "psutil", "tvm", "bridge"]:
    module = importlib.import_module(name)
    versions[name] = getattr(module, "__version__", "?")
from ai_edge_litert.interpreter import Interpreter  # noqa: F401
print("  " + ", ".join(f"{k} {v}" for k, v in versions.items()))
PY
echo "== ready: $VENV/bin/python benchmarks/run.py"
