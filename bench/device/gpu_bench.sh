#!/usr/bin/env bash
# On the lent GPU machine (the device tool), from the repository root, with .whl carried
# (bench/device/fetch_wheels.sh): install the wheels its image lacks, then run bench.gpu_sampler once, its
# JSON results (partial after each phase, whole at the end) and its log into $OUT. About 8 minutes on an
# H200; the benchmark skips what would pass --deadline-seconds (default 540). Arguments go to the benchmark:
#   OUT=/tmp/smoke bash bench/device/gpu_bench.sh --preset tiny --device cpu --size 64x64 --job-frames 81
# FlashAttention-4 joins when .whl-fa4a/ and .whl-fa4b/ (fetch_wheels.sh fa4) were carried by the calls just
# before this one: `true` with carry [".whl-fa4a"], then `true` with [".whl-fa4b"], then this with [".whl"].
set -euo pipefail
out=${OUT:-bench/results}
mkdir -p "$out"
wheels=(.whl/*.whl)
if compgen -G ".whl-fa4a/*.part-*" >/dev/null && compgen -G ".whl-fa4b/*.part-*" >/dev/null; then
    joined=/tmp/fa4-wheels
    mkdir -p "$joined"
    part=$(ls .whl-fa4a/*.part-aa)
    name=$(basename "${part%.part-aa}")
    cat .whl-fa4a/"$name".part-* .whl-fa4b/"$name".part-* >"$joined/$name"
    wheels+=("$joined/$name" .whl-fa4b/*.whl)
    echo "FlashAttention-4: joined $name ($(du -h "$joined/$name" | cut -f1))"
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "${wheels[@]}"
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
python3 -m bench.gpu_sampler --results "$out" "$@" 2>&1 | tee "$out/gpu_bench.log"
