"""InfiniteTalk in PyTorch: portrait + speech → lip-synced talking video (a library and a CLI).

Heavy parts (torch models) are imported by the modules that need them; ``pipeline.audio.decode_audio`` and
``pipeline.conditioning.load_image`` stay light so a web front end can probe media with them.
"""

from pipeline import _torchao_gate

_torchao_gate.install()
