"""Moved to :mod:`lpm.checkpoints` (inference and evaluation need checkpoints too); kept as an alias so that
``from lpm.train.checkpoint import load_codec`` in existing scripts keeps working."""

from lpm.checkpoints import *  # noqa: F401,F403
from lpm.checkpoints import __all__  # noqa: F401
