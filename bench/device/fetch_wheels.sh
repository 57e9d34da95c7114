#!/usr/bin/env bash
# Run here (where PyPI is reachable), from the repository root: the wheels bench.gpu_sampler needs that the
# lent GPU machine's image lacks (Python 3.12, x86-64; torch, transformers, numpy, scipy, pillow, einops and
# cuda-bindings are there), into .whl/ (git-ignored). The device call carries .whl and installs it with
# bench/device/gpu_bench.sh.
#
# With "fa4" it also gathers FlashAttention-4 and its CuTe DSL (95 MB, over one call's 64 MiB): everything
# but the first 52 MB of the DSL's CUDA 13 library wheel goes to .whl-fa4b/, that piece to .whl-fa4a/.
# Carried in two back-to-back calls before the benchmark's (a warm machine keeps ignored files), gpu_bench.sh
# joins the pieces and installs them; the benchmark then times the `fa4` kernel beside the others.
set -euo pipefail
cd "$(dirname "$0")/../.."
download() {
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --pre "$@"
}
wheels=(diffusers==0.42.1 av==18.1.0 pyloudnorm==0.2.0 importlib-metadata==8.7.0 torchao==0.18.0 sageattention==1.0.6)
rm -rf .whl && mkdir .whl
download -d .whl "${wheels[@]}"
du -sh .whl
ls .whl
if [[ "${1:-}" == fa4 ]]; then
    cutlass=4.8.1
    fa4=(flash-attn-4==4.0.0b40 quack-kernels==0.6.5 apache-tvm-ffi==0.1.15.post2 torch-c-dlpack-ext==0.1.5
        nvidia-cutlass-dsl==$cutlass nvidia-cutlass-dsl-libs-base==$cutlass nvidia-cutlass-dsl-libs-core==$cutlass)
    rm -rf .whl-fa4a .whl-fa4b && mkdir .whl-fa4a .whl-fa4b
    download -d .whl-fa4b "${fa4[@]}"
    scratch=$(mktemp -d)
    download -d "$scratch" nvidia-cutlass-dsl-libs-cu13==$cutlass
    libs=$(ls "$scratch"/*.whl)
    split -b 52M "$libs" ".whl-fa4a/$(basename "$libs").part-"
    mv .whl-fa4a/*.part-a[b-z] .whl-fa4b/
    rm -rf "$scratch"
    du -sh .whl-fa4a .whl-fa4b
fi
