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

    ``tuned``: Inductor's coordinate-descent tuning of its generated kernels (what torchao's quantisation
    turns on for the whole process when left to it): a longer compile for possibly faster kernels.
    """
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    torch._inductor.config.coordinate_descent_tuning = tuned
    torch._inductor.config.coordinate_descent_check_all_directions = tuned
    transformer.compile_repeated_blocks(fullgraph=True, dynamic=False)
    logger.info(
        "DiT blocks compiled (torch.compile, static shapes%s); each new shape compiles on its first pass",
        ", coordinate-descent tuning" if tuned else "",
    )


def is_compiled(transformer: InfiniteTalkTransformer3DModel) -> bool:
    return any(getattr(block, "_compiled_call_impl", None) is not None for block in transformer.blocks)
