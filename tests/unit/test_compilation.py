"""Compiled DiT blocks: a replica's warm-up compiles every shape its jobs run, so no job compiles; the
compiled pass computes what the eager one does; torchao does not switch Inductor's tuning on by itself."""

from __future__ import annotations

import pytest
import torch

from pipeline.compilation import compile_transformer
from pipeline.components import load_components
from pipeline.pipeline import GenerationRequest, InfiniteTalkPipeline, working_size
from pipeline.presets import TINY
from pipeline.quantization import quantize_transformer
from pipeline.warmup import pass_inputs, warm_up
from pipeline.weights.dit import build_transformer

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_warm_up_compiles_every_shape_a_job_runs(assets):
    from pipeline.audio import decode_audio
    from pipeline.conditioning import load_image

    components = load_components("tiny", device="cpu", compile=True)
    assert components.identities["compiled"] == "yes"
    assert all(block._compiled_call_impl is not None for block in components.transformer.blocks)
    sizes = [(128, 128), (96, 160)]
    seconds = warm_up(components, sizes, guidance=True)
    # At the preset's working sizes; batch 2 too, for guidance (batched by default).
    working = [working_size(w, h, TINY.max_working_area) for w, h in sizes]
    assert set(seconds) == {f"{w}x{h}/{batch}" for w, h in working for batch in (1, 2)}
    request = GenerationRequest(
        image=load_image(assets / "portrait.png"),
        speech=decode_audio(assets / "speech.wav"),
        prompt="a woman is talking",
        width=128,
        height=128,
        frames=125,
        steps=2,
    )
    pipe = InfiniteTalkPipeline(components)
    guided = GenerationRequest(**{**request.__dict__, "cfg": 1.5, "width": 96, "height": 160})
    with torch._dynamo.config.patch(error_on_recompile=True):
        pipe.generate(request)
        pipe.generate(guided)
        components.batch_guidance = False  # guidance as two batch-1 passes: the cfg-1 graphs serve it
        pipe.generate(GenerationRequest(**{**guided.__dict__, "width": 128, "height": 128}))
    unwarmed = pytest.raises(Exception, match=r"[Rr]ecompil")  # a shape nobody warmed up compiles in the job
    with unwarmed, torch._dynamo.config.patch(error_on_recompile=True):
        pipe.generate(GenerationRequest(**{**request.__dict__, "width": 64, "height": 64, "frames": 81}))


def test_the_compiled_pass_computes_the_eager_one():
    model = build_transformer(dict(TINY.transformer), TINY.random_seed)
    inputs = pass_inputs(dict(TINY.transformer), 64, 64, "cpu", torch.float32)
    with torch.inference_mode():
        eager = model(**inputs)
        compile_transformer(model)
        compiled = model(**inputs)
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-4)


def test_quantising_leaves_inductors_tuning_to_the_compile_option():
    pytest.importorskip("torchao")
    model = build_transformer(dict(TINY.transformer), TINY.random_seed)
    with torch._inductor.config.patch(coordinate_descent_tuning=False):
        quantize_transformer(model, "weights")
        assert torch._inductor.config.coordinate_descent_tuning is False  # torchao would turn it on
        compile_transformer(model)
        assert torch._inductor.config.coordinate_descent_tuning is False
        compile_transformer(model, tuned=True)
        assert torch._inductor.config.coordinate_descent_tuning is True
