#!/usr/bin/env bash
# On the lent GPU machine (the device tool), from the repository root, with .whl carried
# (bench/device/fetch_wheels.sh): install the wheels its image lacks, then run one phase of
# bench.gpu_sampler, results and log into $OUT. One phase fits one device call (≤ 10 min):
#   passes   720x720 and 480x832, every attention backend, and the VAE decode at those sizes
#   large    1280x720, the SDPA backends and flex, and its VAE decode
#   variants 720x720 native attention, then token-chunked, + fused QKV, + compiled blocks, + fp8 dynamic
#   job      the seed's default job end to end (720x720, 125 frames, 7 steps)
#   lean     the worst case of the two-replicas-per-80GB plan: 1280x720 with guidance, fp8 weights, token
#            chunk 4096, tiled VAE, guidance one pass at a time; its peak should stay under 33.7 GiB + wav2vec2
# Arguments after the phase go to bench.gpu_sampler and win over the phase's own (argparse keeps the last):
#   OUT=/tmp/smoke bash bench/device/gpu_bench.sh passes --preset tiny --device cpu --sizes 64x64
set -euo pipefail
phase=${1:?"phase: passes | large | variants | job | lean"}
out=${OUT:-bench/results}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
bench=(python3 -m bench.gpu_sampler --results "$out" --passes 3)
case "$phase" in
    passes) "${bench[@]}" --sizes 720x720,480x832 --skip-job "${@:2}" ;;
    large) "${bench[@]}" --sizes 1280x720 --backends native,_native_cudnn,_native_flash,_native_efficient,flex --skip-job "${@:2}" ;;
    variants) "${bench[@]}" --sizes 720x720 --backends native --token-chunk 4096 --fuse-qkv --compile --fp8 dynamic --skip-vae --skip-job "${@:2}" ;;
    job) "${bench[@]}" --sizes 720x720 --skip-passes --skip-vae "${@:2}" ;;
    lean) "${bench[@]}" --skip-passes --skip-vae --job-lean --job-size 1280x720 --job-frames 81 --job-cfg 1.5 "${@:2}" ;;
    *) echo "unknown phase '$phase' (passes | large | variants | job | lean)" >&2; exit 2 ;;
esac 2>&1 | tee "$out/gpu_bench-$phase.log"
