#!/usr/bin/env bash
# Everything to check on a machine with a GPU, in one command: the tests whose code paths change
# on a GPU (the model's math, decoding loops, mixed precision, devices, LoRA, the training step),
# then the figures of scripts/gpu_check.py. Logs and gpu.json go to the folder given (default gpu_check/).
#
#   bash scripts/gpu_check.sh [OUTDIR]          # on the GPU machine, with TensorFlow's GPU build installed
#   SMOKE=1 bash scripts/gpu_check.sh [OUTDIR]  # tiny sizes, to try the script on a CPU
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu_check}"
mkdir -p "$out"
export TF_CPP_MIN_LOG_LEVEL=2 PYTHONUNBUFFERED=1
python - <<'EOF' 2>&1 | tee "$out/devices.log"
import tensorflow as tf
print("tensorflow", tf.__version__, "built with CUDA:", tf.test.is_built_with_cuda())
print("GPUs:", tf.config.list_physical_devices("GPU"))
EOF
if [ -z "${SMOKE:-}" ] && ! python -c "import tensorflow as tf, sys; sys.exit(not tf.config.list_physical_devices('GPU'))"; then
    echo "gpu_check: TensorFlow sees no GPU (set SMOKE=1 to run the tiny sizes on a CPU)" >&2
    exit 2
fi
status=0
tests=(tests/model/test_model.py tests/generation/test_generate.py tests/training/test_scale.py tests/model/test_lora.py tests/training/test_train.py)
python -m pytest -q -x "${tests[@]}" 2>&1 | tee "$out/tests.log" || status=1
python scripts/gpu_check.py ${SMOKE:+--smoke} --json "$out/gpu.json" 2>&1 | tee "$out/figures.log" || status=1
exit $status
