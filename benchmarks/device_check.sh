#!/usr/bin/env bash
# The GPU check of the vectorized population, prepared for a session lent the device machine.
#
# What it runs, each step's output in $OUT/<name>.txt ($OUT/env.txt says where):
#   tests_vectorized   the vectorized and fused-round tests on the accelerator
#                      (tests/test_vectorized.py, tests/test_vectorized_round.py)
#   tests_multihost    the 2-process jax.distributed test (CPU devices in its subprocesses:
#                      it checks the collective snapshot and resume code on that machine)
#   vectorized_step    benchmarks/vectorized_step.py: member steps/s, fused round vs one
#                      dispatch per step, and peak device memory per member (JSON + table)
#   vectorized_vs_threads  benchmarks/vectorized_vs_threads.py (JSON + table)
#   rl_pbt, rl_fixed   examples/rl at a small size: the population's final return, PBT and
#                      fixed hyperparameters (a table; needs the gymnax wheels below)
#
# The device image has JAX (CUDA), flax, optax, orbax-checkpoint, msgpack, scikit-learn,
# tqdm, rich, pytest and hypothesis, but not `immutables`, and cannot reach a registry.
# So, here, once, from the repo root:
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl immutables==0.21 gymnax==1.0.1 gymnasium==1.3.0 farama-notifications==0.0.4 \
#       cloudpickle==3.1.1
#
# (importing gymnax also loads matplotlib, seaborn and pandas; the image's list above
# does not say it has them, so add seaborn==0.13.2 and, if missing, pandas and matplotlib
# wheels while the carry stays under 64 MiB. If the RL steps still cannot import gymnax,
# they fail alone and the other steps run.)
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
    step_args=(--members 2 --models tiny mlp --steps-per-round 2 --rounds 2 --steps 2 --repeats 1)
    threads_args=(--members 2 --models mlp --steps 10 --eval-every 5 --repeats 1)
    rl_args=(--members 2 --total-steps 1024 --interval 512)  # (two rounds: whole rounds)
else
    step_args=(--members 8 16 64 --steps-per-round 10 --rounds 10 --steps 20 --repeats 3)
    threads_args=(--members 8 16 --steps 60 --repeats 3)
    rl_args=(--members 8 --total-steps 51200)
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
run tests_vectorized 180 python3 -m pytest tests/test_vectorized.py tests/test_vectorized_round.py \
    -q -x -p no:cacheprovider
run tests_multihost 150 python3 -m pytest tests/test_multihost.py -q -x -p no:cacheprovider
run vectorized_step 150 python3 benchmarks/vectorized_step.py "${step_args[@]}"
run vectorized_vs_threads 240 python3 benchmarks/vectorized_vs_threads.py "${threads_args[@]}"
run rl_pbt 120 python3 -m examples.rl "${rl_args[@]}" --logdir "$OUT/rl-pbt"
run rl_fixed 120 python3 -m examples.rl "${rl_args[@]}" --fixed --logdir "$OUT/rl-fixed"
exit $status
