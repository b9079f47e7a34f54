"""lpm: variable-rate learned image compression with Layer-adaptive Prompt Modules.

A reproduction of Qin et al. (arXiv:2311.13846): a frozen Swin-transformer codec whose attention
layers take learned prompt tokens, so that one backbone covers a range of rates. Subpackages:
``lpm.layers`` (attention and prompt layers), ``lpm.models`` (codecs), ``lpm.train`` (losses and
loops), ``lpm.eval`` (real-bitstream evaluation); ``lpm.data`` reads images and locates data sets.
"""

__version__ = "0.1.0"
