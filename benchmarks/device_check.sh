#!/usr/bin/env bash
# The GPU check of the vectorized population, prepared for a session lent the device machine.
#
# What it runs: the vectorized tests on the accelerator, then benchmarks/vectorized_step.py
# and benchmarks/vectorized_vs_threads.py (the figures docs/vectorized.md lacks for GPUs).
# Each writes its JSON line and table to $OUT/<name>.txt; $OUT/env.txt says where.
#
# The device image has JAX (CUDA), flax, optax, orbax-checkpoint, msgpack, scikit-learn,
# tqdm, rich, pytest and hypothesis, but not `immutables`, and cannot reach a registry.
# So, here, once, from the repo root:
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl immutables==0.21
#
# then call the device tool's `run` with command "bash benchmarks/device_check.sh",
# carry [".whl"] and timeout_s 540 (about 5 minutes of work on an H200 is planned).
# QUICK=1 shrinks every setting (a dry run of this script on a CPU, in a minute or two).
#
# Ray cannot be checked there: its 2.60 wheel (79 MB) is over the 64 MiB a call carries.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/jaxpop-device-check}"
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site:$PWD"
else
    export PYTHONPATH="$PWD"
fi
export PYTHONUNBUFFERED=1

{
    nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"
    python3 -c "import jax; print('jax', jax.__version__, jax.devices())"
    nproc
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

if [ "${QUICK:-0}" = 1 ]; then
    step_args=(--members 2 --models mlp --steps 2 --repeats 1)
    threads_args=(--members 2 --models mlp --steps 10 --eval-every 5 --repeats 1)
else
    step_args=(--members 8 16 64 --steps 20 --repeats 3)
    threads_args=(--members 8 16 --steps 60 --repeats 3)
fi

status=0
run() {
    local name=$1 limit=$2
    shift 2
    timeout "$limit" "$@" >"$OUT/$name.txt" 2>&1
    local rc=$?
    echo "== $name: rc=$rc"
    tail -n 15 "$OUT/$name.txt"
    [ "$rc" = 0 ] || status=1
}
run tests_vectorized 180 python3 -m pytest tests/test_vectorized.py -q -x -p no:cacheprovider
run vectorized_step 150 python3 benchmarks/vectorized_step.py "${step_args[@]}"
run vectorized_vs_threads 240 python3 benchmarks/vectorized_vs_threads.py "${threads_args[@]}"
exit $status
