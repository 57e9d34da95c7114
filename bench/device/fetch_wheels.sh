#!/usr/bin/env bash
# Run here (where PyPI is reachable), from the repository root: the wheels bench.gpu_sampler needs that the
# lent GPU machine's image lacks (Python 3.12, x86-64; torch, transformers, numpy, scipy, pillow are there),
# into .whl/ (git-ignored). The device call carries .whl and installs it with bench/device/gpu_bench.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
wheels=(diffusers==0.42.1 av==18.1.0 pyloudnorm==0.2.0 importlib-metadata==8.7.0 torchao==0.18.0 sageattention==1.0.6)
rm -rf .whl && mkdir .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${wheels[@]}"
du -sh .whl
ls .whl
