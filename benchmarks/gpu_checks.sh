#!/usr/bin/env bash
# The GPU checks of issue 16 as one prepared command, for a session lent a GPU machine (the `device` tool; 15
# minutes of device time in all, so everything it needs is made here first and its logic is dry-run on the CPU).
#
#   bash benchmarks/gpu_checks.sh prepare     # here: fills .gpu/ (ignored by git; travels with carry: [".gpu"])
#   device run, carry [".gpu"], timeout_s 600:  bash benchmarks/gpu_checks.sh run
#   DEVICE=cpu SMALL=1 bash benchmarks/gpu_checks.sh run     # here: the same steps on the CPU, small
#
# `prepare` puts in .gpu/: wheels of the packages the GPU machine's Python (3.12, with its own CUDA torch) lacks,
# at this venv's versions; the shipped data (CIFAR-10 and SST-2 tarballs with SHA256SUMS; ../shared does not
# travel); and COMMIT, the commit the copy was taken from (`-dirty` if src/, benchmarks/, tests/ or pyproject.toml
# differ from it), which the results' provenance records there, where there is no git folder.
#
# `run` runs these steps in order, each under its own time limit, and keeps going when one fails:
#   env      versions, the commit, nvidia-smi, every package the code imports, CIFAR-10 decoded once into the cache
#   pytest   tests/test_gpu.py: the tiny zoo trained on the device and every image tool of every track run on it
#   cifar10  the cifar10-zoo config (airbench-style airnet, width 0.25, 12 epochs) cut to 64 models, built on the
#            device by JOBS worker processes of BATCH_MODELS models each, stopped when its budget (what is left of
#            TOTAL_S less 70 s, BUILD_S at most) is spent; then its throughput against the GEMM peak measured in the
#            same run (benchmarks/large_zoo.py --flops)
#   e2e      (only when asked for) the default benchmark (`trojanbench run --device cuda`) from an empty cache, timed
#            stage by stage; it needs device time of its own (the pytest step already runs the default benchmark
#            on the device, every tool included)
# and copies what they wrote to $OUT: steps.log (every step's output) and the JSONs, for benchmarks/results/.
# Each step's limit is cut to what is left of TOTAL_S (570 s: set it from the device time left, less the machine's
# start, and give the device call 30 s more), and a step with under 20 s left is skipped.
# Variables: DEVICE (cuda), STEPS ("env pytest cifar10"), TOTAL_S (570), BUILD_S (420), JOBS (2) and BATCH_MODELS
# (16) for the cifar10 build, SMALL=1 (the cifar10 step builds 8 digits models of 2 epochs instead: its logic, not
# CIFAR-10's cost), PY (python3 there; .venv/bin/python here when DEVICE=cpu). Run `prepare` after the last commit:
# the results record the commit in .gpu/COMMIT.
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD

prepare() {
    local py=.venv/bin/python
    [ -x $py ] || { echo "run 'make venv' first: the wheels are pinned to this venv's versions"; exit 1; }
    local exclude
    exclude=$(git rev-parse --git-path info/exclude) && mkdir -p "$(dirname "$exclude")" || exit 1
    grep -qx '/.gpu/' "$exclude" 2>/dev/null || echo '/.gpu/' >> "$exclude"
    rm -rf .gpu && mkdir -p .gpu/whl .gpu/data
    local pins
    pins=$($py -c "from importlib.metadata import version as v
print(' '.join(f'{n}=={v(n)}' for n in ['pydantic', 'pydantic_core', 'annotated_types', 'typing_inspection', 'typing_extensions', 'captum']))")
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .gpu/whl $pins || exit 1
    local data=${TROJANBENCH_DATA_ROOT:-../shared/data}
    cp "$data"/cifar10-images.tar.gz "$data"/sst2.tar.gz "$data"/SHA256SUMS .gpu/data/ || exit 1
    local dirty=""
    [ -n "$(git status --porcelain -- src benchmarks tests pyproject.toml)" ] && dirty=-dirty
    echo "$(git rev-parse HEAD)$dirty" > .gpu/COMMIT
    echo "prepared .gpu: $(ls .gpu/whl | tr '\n' ' ')| commit $(cat .gpu/COMMIT) | $(du -sh .gpu | cut -f1)"
}

run() {
    local device=${DEVICE:-cuda} out=${OUT:-/tmp/gpu-checks-out} build_s=${BUILD_S:-420} total=${TOTAL_S:-570}
    SECONDS=0
    local py=${PY:-python3} zoo="--config cifar10-zoo --models 64" small=${SMALL:-0}
    [ "$device" = cpu ] && [ -x .venv/bin/python ] && py=${PY:-.venv/bin/python}
    [ "$small" = 1 ] && zoo="--config digits-quick --models 8 --epochs 2"  # one CIFAR-10 epoch takes minutes on a CPU
    mkdir -p "$out"
    local log=$out/steps.log site=/tmp/gpu-checks-site
    export PYTHONPATH=$ROOT/src  # this copy's code, whatever is installed
    if [ -d .gpu/whl ] && [ "$device" != cpu ]; then  # the GPU machine's own Python: add what it lacks
        $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $site .gpu/whl/*.whl \
            >> "$log" 2>&1 || { echo "installing .gpu/whl failed" | tee -a "$log"; exit 1; }
        export PYTHONPATH=$ROOT/src:$site
    fi
    [ -d .gpu/data ] && export TROJANBENCH_DATA_ROOT=$ROOT/.gpu/data
    [ -f .gpu/COMMIT ] && export TROJANBENCH_COMMIT=$(cat .gpu/COMMIT)
    export TROJANBENCH_CACHE=/tmp/gpu-checks-cache PYTHONUNBUFFERED=1
    local tag="-${device%%:*}"; [ "$small" = 1 ] && tag="$tag-small"  # no ':' in names that come back from $OUT
    local results=benchmarks/results since
    since=$(mktemp)  # results written after this file are this run's

    step() {  # step NAME LIMIT_S COMMAND...: run it under its limit, its output into the log, its verdict on stdout
        local name=$1 limit=$2; shift 2
        local t0=$SECONDS left=$((total - SECONDS))
        [ "$left" -lt "$limit" ] && limit=$left
        [ "$limit" -lt 20 ] && { echo "=== $name: skipped, ${left}s of TOTAL_S left" | tee -a "$log"; return; }
        echo "=== $name (limit ${limit}s): $*" >> "$log"
        timeout -k 10 "$limit" "$@" >> "$log" 2>&1
        local rc=$?
        echo "=== $name: rc=$rc in $((SECONDS - t0))s" | tee -a "$log"
        find $results -maxdepth 1 -name '*.json' -newer "$since" -exec cp {} "$out/" \;  # what it wrote so far
    }

    local budget
    for s in ${STEPS:-env pytest cifar10}; do
        case $s in
        env) step env 60 bash -c "nvidia-smi 2>&1 | head -15; echo commit \$TROJANBENCH_COMMIT; $py -c 'import torch, sys
import trojanbench.bench, trojanbench.tools, captum.attr  # a missing or broken wheel fails here, in seconds
trojanbench.tools.tool_registries()
print(sys.version.split()[0], torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())
from trojanbench.data import load_dataset; d = load_dataset(\"cifar10\"); print(\"cifar10\", tuple(d.x_train.shape))'" ;;
        cifar10)  # the build gets what is left, less 70 s to summarise it and measure the GEMM peak (BUILD_S at most)
            budget=$((total - SECONDS - 70)); [ "$budget" -gt "$build_s" ] && budget=$build_s
            step cifar10 $((budget + 70)) $py benchmarks/large_zoo.py $zoo --root /tmp/gpu-checks-zoo-$$ --executor pool \
                --jobs "${JOBS:-2}" --batch-models "${BATCH_MODELS:-16}" --device "$device" --budget-s "$budget" --flops \
                --out "cifar10_zoo$tag" ;;
        pytest) step pytest 300 env TROJANBENCH_GPU_TEST_DEVICE="$device" $py -m pytest -m gpu tests/test_gpu.py -x -q -s \
                    -p no:cacheprovider ;;
        e2e) step e2e 240 $py benchmarks/end_to_end.py --no-warm --device "$device" ;;
        *) echo "unknown step $s" | tee -a "$log" ;;
        esac
    done
    rm -f "$since"
    echo "files in $out: $(ls "$out" | tr '\n' ' ')"
}

case ${1:-run} in
prepare) prepare ;;
run) run ;;
*) echo "usage: bash benchmarks/gpu_checks.sh prepare|run"; exit 2 ;;
esac
