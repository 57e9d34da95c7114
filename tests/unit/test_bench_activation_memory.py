"""bench.activation_memory: its result and table on the tiny preset, and the VAE tiling saving it reports."""

from __future__ import annotations

import json

from diffusers import AutoencoderKLWan

from bench.activation_memory import DTYPE, main, vae_stages_gib
from bench.tensor_memory import default_dtype, fake_tensors
from pipeline.conditioning.vae import WanVAE
from pipeline.presets import INFINITETALK_14B


def test_tiny_run_writes_every_stage_and_replica_row(tmp_path, capsys):
    argv = ["--preset", "tiny", "--sizes", "64x64", "--token-chunk", "100", "--results", str(tmp_path)]
    assert main(argv) == 0
    (path,) = tmp_path.glob("activation_memory-*.json")
    figures = json.loads(path.read_text())["figures"]
    assert figures["token_chunk"] == 100 and set(figures["sizes"]) == {"64x64"}
    for stages in figures["sizes"].values():
        dit = stages["dit_pass_gib"]
        assert set(dit) == {"cfg 1", "cfg ≠ 1, batched", "cfg ≠ 1, one at a time"}
        assert all(peak["whole"] > 0 and peak["token_chunked"] > 0 for peak in dit.values())
        batched, one_at_a_time = dit["cfg ≠ 1, batched"]["whole"], dit["cfg ≠ 1, one at a time"]["whole"]
        assert batched > one_at_a_time > dit["cfg 1"]["whole"]
        assert set(stages["vae_gib"]["whole"]) == {"image_condition", "chunk_decode"}
        # Below diffusers' 256-pixel tile the tiled VAE runs the same whole-frame code.
        assert stages["vae_gib"]["tiled"] == stages["vae_gib"]["whole"]
    assert len(figures["replicas"]) == 2 * 2 * 2  # guidance × plan × weights format
    for row in figures["replicas"]:
        weights = figures["weights_gib"]["bf16" if row["weights"] == "bf16" else "fp8_dit"]
        assert row["replica_gib"] == weights + row["activations_gib"]
    out = capsys.readouterr().out
    assert "DiT step, cfg ≠ 1, batched" in out and "2 per 80 GB" in out


def test_tiling_cuts_the_14b_chunk_decode_peak_at_480x832():
    with fake_tensors():
        with default_dtype(DTYPE):
            vae = WanVAE(AutoencoderKLWan(**INFINITETALK_14B.vae)).eval()
        # Only the chunk's end: the tiled image condition takes a minute under fake tensors on 2 cores.
        whole = vae_stages_gib(vae, "480x832", tiled=False, stages=("chunk_decode",))["chunk_decode"]
        tiled = vae_stages_gib(vae, "480x832", tiled=True, stages=("chunk_decode",))["chunk_decode"]
    assert not vae.model.use_tiling  # left as it was found
    # Counted: 3.96 GiB whole (the decode), 1.12 GiB tiled (then the colour match of the decoded chunk peaks).
    assert 3.5 < whole < 4.5
    assert tiled < 0.35 * whole
