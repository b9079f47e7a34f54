"""lpm: variable-rate learned image compression with Layer-adaptive Prompt Modules.

A reproduction of Qin et al. (arXiv:2311.13846): a frozen Swin-transformer codec whose attention
layers take learned prompt tokens, so that one backbone covers a range of rates. Subpackages:
``lpm.layers`` (attention and prompt layers), ``lpm.models`` (the backbone, the variable-rate interface and
every method), ``lpm.checkpoints`` (files), ``lpm.train`` (the one training engine behind ``lpm train``),
``lpm.eval`` (real-bitstream evaluation), ``lpm.figures`` (what the notebooks plot); ``lpm.data`` reads images
and locates data sets. The README's "What is inside" maps every module.
"""

__version__ = "0.4.0"

import warnings as _warnings

# compressai (imported by lpm.models) calls torch.jit.script at import time, which torch>=2.10 flags as
# deprecated on every run; it is not ours to fix and would bury lpm's own messages.
_warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
