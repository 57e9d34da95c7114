"""fp8 DiT weights (torchao): which layers change, how close the output stays, what is refused."""

from __future__ import annotations

import pytest
import torch
import yaml
from pydantic import ValidationError
from tensor_bytes import stored_bytes

from pipeline.components import load_components
from pipeline.errors import InputError
from pipeline.pipeline import InfiniteTalkPipeline
from pipeline.presets import TINY
from pipeline.quantization import is_quantizable, quantize_transformer
from pipeline.warmup import pass_inputs
from pipeline.weights.dit import build_transformer
from serve.config import ModelConfig

pytest.importorskip("torchao")

# Per block: self-attention q, k, v, out; cross-attention q, k, v, out and the image k, v; the FFN's two;
# the audio attention's q, kv, proj.
LINEARS_PER_BLOCK = 15


def _tiny_transformer(dtype: torch.dtype) -> torch.nn.Module:
    return build_transformer(dict(TINY.transformer), TINY.random_seed, device="cpu", dtype=dtype)


def _inputs(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return pass_inputs(dict(TINY.transformer), 64, 64, "cpu", dtype)


def _one_pass(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.inference_mode():
        return model(**inputs).float()


def _block_linears(model: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    return {name: module for name, module in model.named_modules() if is_quantizable(module, name)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_weights_change_only_block_linears_and_stay_close_to_the_full_precision_pass(dtype):
    model, inputs = _tiny_transformer(dtype), _inputs(dtype)
    reference = _one_pass(model, inputs)
    embedding_before = model.patch_embedding.weight.clone()

    changed = quantize_transformer(model, "weights")

    layers = _block_linears(model)
    assert changed == len(layers) == LINEARS_PER_BLOCK * TINY.transformer["num_layers"]
    assert all(layer.weight.dtype == dtype for layer in layers.values())  # computed in the model's dtype
    assert all(type(layer.weight).__name__ == "Float8Tensor" for layer in layers.values())
    assert type(model.proj_out.weight) is torch.nn.Parameter
    assert torch.equal(model.patch_embedding.weight, embedding_before)
    # Stored: one byte per weight plus an fp32 scale per output channel (was 4 or 2 bytes per weight).
    for layer in layers.values():
        rows, columns = layer.weight.shape
        assert stored_bytes(layer.weight) == rows * columns + 4 * rows

    quantized = _one_pass(model, inputs)
    relative_error = ((quantized - reference).norm() / reference.norm()).item()
    assert 0 < relative_error < 0.05


def test_off_changes_nothing():
    model, inputs = _tiny_transformer(torch.float32), _inputs(torch.float32)
    reference = _one_pass(model, inputs)
    assert quantize_transformer(model, "off") == 0
    assert torch.equal(_one_pass(model, inputs), reference)


@pytest.mark.parametrize("mode", ["dynamic", "dynamic-tensorwise"])
def test_fp8_matmuls_need_a_recent_gpu(mode):
    with pytest.raises(InputError, match=rf"'{mode}'.*GPU.*Use 'weights'"):
        quantize_transformer(_tiny_transformer(torch.float32), mode)


@pytest.mark.parametrize(
    ("mode", "granularity"), [("dynamic", "PerRow"), ("dynamic-tensorwise", "PerTensor")]
)
def test_each_matmul_mode_asks_torchao_for_its_scales_and_leaves_inductor_alone(
    monkeypatch, mode, granularity
):
    import torchao.quantization

    from pipeline import quantization

    seen = []
    monkeypatch.setattr(quantization, "_check_dynamic_support", lambda device, mode: None)  # no GPU here
    monkeypatch.setattr(
        torchao.quantization, "quantize_", lambda model, config, filter_fn: seen.append(config)
    )
    quantize_transformer(_tiny_transformer(torch.float32), mode)
    (config,) = seen
    assert type(config).__name__ == "Float8DynamicActivationFloat8WeightConfig"
    assert {type(g).__name__ for g in config.granularity} == {granularity}
    assert config.set_inductor_config is False


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="fp4"):
        quantize_transformer(_tiny_transformer(torch.float32), "fp4")


def test_a_whole_generation_runs_on_fp8_weights_and_records_it(example_request, tmp_path):
    components = load_components("tiny", device="cpu", fp8="weights")
    assert components.identities["fp8"] == "weights"
    assert len(_block_linears(components.transformer)) == LINEARS_PER_BLOCK * TINY.transformer["num_layers"]
    request = example_request(width=128, height=128, frames=81, steps=2)
    output = InfiniteTalkPipeline(components).generate(request)
    assert output.video.shape[1] == 81 and torch.isfinite(output.video).all()


def test_model_config_takes_the_fp8_mode_and_names_a_bad_one():
    assert ModelConfig(fp8="weights").fp8.value == "weights"
    assert ModelConfig().fp8.value == "off"
    assert ModelConfig.model_validate(yaml.safe_load("fp8: off")).fp8.value == "off"  # YAML's false
    for bad in ("fp4", True, "on"):
        with pytest.raises(ValidationError, match="fp8"):
            ModelConfig(fp8=bad)
