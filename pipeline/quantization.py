"""fp8 weights for the DiT blocks (torchao), an option of the sampler: the 14B model's linear layers hold
most of its bytes and nearly all of its FLOPs.

* ``weights``: fp8 (e4m3) weights with one scale per output channel, computed in the activations' dtype.
  Halves the blocks' weight memory; runs anywhere torchao does (the CPU included), so it is what tests check.
* ``dynamic``: the same weights, and activations quantised per row (one scale per token) at run time, so
  the matmuls themselves run in fp8 (``torch._scaled_mm``). Needs a GPU of compute capability 8.9 or newer
  (Ada, Hopper). Without ``torch.compile`` the quantisation kernels are not fused and it is slower than bf16.
* ``dynamic-tensorwise``: as ``dynamic`` with one scale per tensor for weights and activations: fewer
  scales to compute, less precision where a tensor's rows differ in range.

torchao is imported here, when fp8 is asked for, never at the package's import (``pipeline._torchao_gate``).

Only linear layers inside ``blocks`` change; the patch embedding, condition and audio embedders, norms and
the output head stay in the model's dtype, as do layers whose sides are not multiples of 16 (fp8 matmul
kernels need that).
"""

from __future__ import annotations

from types import ModuleType

import torch
from torch import nn

from pipeline._torchao_gate import reveal_torchao
from pipeline.errors import InputError
from pipeline.presets import Fp8Mode

_FP8_MULTIPLE = 16
_DYNAMIC_MIN_CAPABILITY = (8, 9)


def is_quantizable(module: nn.Module, name: str) -> bool:
    """A linear layer of a DiT block whose sides fp8 kernels accept."""
    return (
        isinstance(module, nn.Linear)
        and name.startswith("blocks.")
        and module.in_features % _FP8_MULTIPLE == 0
        and module.out_features % _FP8_MULTIPLE == 0
    )


def quantize_transformer(transformer: nn.Module, mode: Fp8Mode | str) -> int:
    """Quantise ``transformer``'s block linears in place; returns how many layers changed (0 for ``off``)."""
    mode = Fp8Mode(mode)
    if mode is Fp8Mode.OFF:
        return 0
    device = next(transformer.parameters()).device
    if mode.runs_fp8_matmuls:
        _check_dynamic_support(device, mode)
    torchao = import_torchao()
    quantization = torchao.quantization
    # torchao would also switch on Inductor's coordinate-descent tuning for the whole process (on an H200 a
    # 185 s first compiled pass instead of 20 s); pipeline.compilation decides Inductor's settings.
    if mode is Fp8Mode.WEIGHTS:
        config = quantization.Float8WeightOnlyConfig(set_inductor_config=False)
    else:
        granularity = quantization.PerRow() if mode is Fp8Mode.DYNAMIC else quantization.PerTensor()
        config = quantization.Float8DynamicActivationFloat8WeightConfig(
            granularity=granularity, set_inductor_config=False
        )
    count = sum(1 for name, module in transformer.named_modules() if is_quantizable(module, name))
    quantization.quantize_(transformer, config, filter_fn=is_quantizable)
    return count


def import_torchao() -> ModuleType:
    """torchao, with its quantization API loaded, or an ``InputError`` saying how to install it."""
    reveal_torchao()
    try:
        import torchao.quantization
    except ImportError as error:
        raise InputError("fp8 weights need torchao: pip install 'infinitetalk-serve[fp8]'") from error
    import torchao

    return torchao


def _check_dynamic_support(device: torch.device, mode: Fp8Mode) -> None:
    if device.type != "cuda":
        raise InputError(
            f"fp8 '{mode.value}' runs fp8 matmuls on a GPU; the model is on {device}. Use 'weights'."
        )
    capability = torch.cuda.get_device_capability(device)
    if capability < _DYNAMIC_MIN_CAPABILITY:
        raise InputError(
            f"fp8 '{mode.value}' needs compute capability 8.9 or newer (Ada, Hopper); this GPU has "
            f"{capability[0]}.{capability[1]}. Use 'weights'."
        )
