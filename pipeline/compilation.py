"""``torch.compile`` of the DiT's blocks (regional compilation): the 40 blocks share one compiled graph per
input shape, so compiling costs about one block's compile time, not forty.

Shapes are static (``dynamic=False``): each working size, and batch 2 for guidance, compiles its own graph the
first time it runs, with kernels specialised to it. ``pipeline.warmup.warm_up`` runs those first passes when
a replica starts, so no job pays for compilation.
"""

from __future__ import annotations

import logging

import torch

from pipeline.models.transformer import InfiniteTalkTransformer3DModel

logger = logging.getLogger(__name__)

# Graphs per block kept before torch.compile gives up and runs a block eagerly: sizes x guidance batches,
# with room for a few sizes nobody warmed up.
RECOMPILE_LIMIT = 32


def compile_transformer(transformer: InfiniteTalkTransformer3DModel, tuned: bool = False) -> None:
    """Compile every block in place (fullgraph: a graph break would be a silent slowdown, so it fails).

    ``tuned``: switch on Inductor's coordinate-descent tuning of its generated kernels for the process (what
    torchao's quantisation would do if left to it): on an H200 the first 720x720 pass took 185 s instead of
    20 s, for passes 2 % faster. Untuned, Inductor's settings are left as they are (the environment's
    ``TORCHINDUCTOR_COORDINATE_DESCENT_TUNING`` included).
    """
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    if tuned:
        torch._inductor.config.coordinate_descent_tuning = True
        torch._inductor.config.coordinate_descent_check_all_directions = True
    transformer.compile_repeated_blocks(fullgraph=True, dynamic=False)
    logger.info(
        "DiT blocks compiled (torch.compile, static shapes%s); each new shape compiles on its first pass",
        ", coordinate-descent tuning" if tuned else "",
    )
