"""The one name table: named model configs and the checkpoint manifest (file + sha256 + budget).

Every other part of lpm (CLI, notebooks, evaluation, training configs) refers to models by these names.

``CONFIGS``: architecture sizes by name (``"tic"`` is the paper-size N=128, M=192 codec; ``"tiny"`` is for
tests and smoke runs). ``CHECKPOINTS``: trained checkpoints shipped under ``results/checkpoints/``, each
with its sha256 (checked on load) and the training budget it was made with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from lpm.checkpoints import LoadedCodec, load_codec
from lpm.fsutil import broken_link
from lpm.paths import CHECKPOINT_DIR, PROJECT_ROOT  # noqa: F401  (PROJECT_ROOT re-exported)
from lpm.models import DEFAULT_RATES, CodecConfig, PromptConfig, PromptedCodec, TICCodec

__all__ = ["CONFIGS", "CHECKPOINTS", "CheckpointEntry", "build", "checkpoint_path", "load", "CHECKPOINT_DIR"]


CONFIGS: dict[str, dict[str, Any]] = {
    # TIC / Kao et al. size: N=128, M=192, Swin depths (2,4,6)/(6,4,2), window 8 (4 in the hyperprior).
    "tic": {"codec": CodecConfig().to_dict(), "prompt": PromptConfig().to_dict(), "rates": list(DEFAULT_RATES)},
    # Test/smoke size: same structure, ~100 k parameters.
    "tiny": {
        "codec": CodecConfig(
            N=16, M=24, enc_depths=(1, 1, 2), dec_depths=(2, 1, 1), enc_heads=(2, 2, 2), dec_heads=(2, 2, 2),
            hyper_depth=2, hyper_heads=2,
        ).to_dict(),
        "prompt": PromptConfig(enc_channels=8, dec_channels=8).to_dict(),
        "rates": list(DEFAULT_RATES),
    },
}


@dataclass(frozen=True)
class CheckpointEntry:
    """A shipped checkpoint: file under ``CHECKPOINT_DIR``, its sha256, config name and training budget."""

    file: str
    sha256: str
    config: str
    budget: str
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


#: Trained checkpoints. No GPU-trained checkpoint exists yet (no GPU was available so far); the smoke
#: checkpoint below is a tiny model trained for minutes on a CPU so that the CLI, the main job and the
#: notebooks show real (weak) compression. Its numbers say nothing about the paper's claims.
CHECKPOINTS: dict[str, CheckpointEntry] = {
    "tiny-smoke": CheckpointEntry(
        file="tiny-smoke.safetensors",
        sha256="9f658838ca212761c880cc6a614d18c556285a58e83f4fc5952b8e89c16d14fc",
        config="tiny",
        budget=(
            "smoke checkpoint, NOT the paper's model or budget: tiny config + per-rate latent gain (beyond the "
            "paper), trained with `lpm train` on the CPU (1 thread), 15.8 CPU-minutes; base 1000 steps x 8 crops "
            "of 128px on 500 BSDS500 images (10.9 min); prompts 150 steps/rate x 5 rates x 8 crops of 128px on 50 "
            "images (4.9 min); 14000 crops in all"
        ),
        description="made by scripts/make_smoke_checkpoint.py (lpm train: configs/tiny-smoke-base.yaml, then "
        "configs/tiny-smoke-prompts.yaml from that base); both runs' ledgers are in its meta",
    ),
    # The paper's method at the same budget: prompt modules alone (no latent gain) on the SAME frozen base as
    # tiny-smoke (its base tensors, bit for bit), the same steps, lr, crops and subset. The notebooks' "ours".
    "tiny-smoke-prompts-only": CheckpointEntry(
        file="tiny-smoke-prompts-only.safetensors",
        sha256="ab91a67ad7690aa57e7240265006eeffe8f1475dc54e18587d24264bc11885fa",
        config="tiny",
        budget=(
            "smoke checkpoint, NOT the paper's model or budget: tiny config, the paper's method: prompts alone (no "
            "latent gain), trained with `lpm train` on the CPU (1 thread), 14.8 CPU-minutes; base 1000 steps x 8 "
            "crops of 128px on 500 BSDS500 images (10.9 min); prompts 150 steps/rate x 5 rates x 8 crops of 128px "
            "on 50 images (3.9 min); 14000 crops in all"
        ),
        description="made by scripts/make_smoke_checkpoint.py --prompts-only (lpm train: "
        "configs/tiny-smoke-prompts-only.yaml on the frozen base inside tiny-smoke); both ledgers are in its meta",
    ),
    # Issue 14: low-rank rate adapters (LoRACodec) on the SAME frozen tiny base as tiny-smoke, with the prompt
    # modules' steps, lr, crops and data subset; for the same-budget comparison (notebooks/comparison.ipynb).
    "tiny-smoke-lora": CheckpointEntry(
        file="tiny-smoke-lora.safetensors",
        sha256="e65053662950ba39b70971686437ed083d21c68ad9143fbc61a54146e004136c",
        config="tiny",
        budget=(
            "smoke checkpoint, NOT the paper's model or budget: tiny config + low-rank rate adapters (LoRACodec, "
            "rank 7 on qkv/proj/fc1/fc2 of every Swin block), trained with `lpm train` on the CPU (1 thread), 16.3 "
            "CPU-minutes; base 1000 steps x 8 crops of 128px on 500 BSDS500 images (10.9 min); adapters 150 "
            "steps/rate x 5 rates x 8 crops of 128px on 50 images (5.4 min); 14000 crops in all"
        ),
        description="made by scripts/make_smoke_checkpoint.py --lora (lpm train: configs/tiny-smoke-base.yaml, "
        "then configs/tiny-smoke-lora.yaml from that base, the base shared with tiny-smoke); both runs' ledgers "
        "are in its meta",
    ),
    # Beyond the paper: token-fed additive-only prompts (every Swin block's heads read its own tokens and add to
    # them, prompt stride 1, no prompt keys/values) on the SAME frozen base as tiny-smoke (its tensors, bit for bit, laid out at
    # prompt stride 1), the same steps, lr, crops and subset; the one prompt form that moved the rate in the
    # reach probes (README, "What in a Swin block moves the rate").
    "tiny-smoke-hidden": CheckpointEntry(
        file="tiny-smoke-hidden.safetensors",
        sha256="7163a8bf13af9c3670f66df1029888afabe9eaaa76880a30fe4048c87e9cd589",
        config="tiny",
        budget=(
            "smoke checkpoint, NOT the paper's model or budget: tiny config, token-fed additive-only prompts (beyond "
            "the paper: each Swin block's heads read its own tokens, prompt stride 1), trained with `lpm train` on "
            "the CPU (1 thread), 13.4 CPU-minutes; base 1000 steps x 8 crops of 128px on 500 BSDS500 images (10.9 "
            "min); prompts 150 steps/rate x 5 rates x 8 crops of 128px on 50 images (2.5 min); 14000 crops in all"
        ),
        description="made by scripts/make_smoke_checkpoint.py --hidden (lpm train: configs/tiny-smoke-hidden.yaml "
        "on the frozen base inside tiny-smoke); both ledgers are in its meta",
    ),
}


#: The checkpoint the CLI uses when no ``--model`` is given: the paper's method (prompt modules alone), never an
#: extension in its place. Named here, not picked by sort order, so that shipping another checkpoint cannot
#: change what ``lpm compress`` does without ``--model``. Its rate barely moves at the smoke budget (README, "The
#: measured risk"); ``--model tiny-smoke`` is the latent-gain extension, whose rate does.
DEFAULT_CHECKPOINT = "tiny-smoke-prompts-only"

def build(name: str = "tic", *, prompted: bool = True, base_rate: float = 0.0483) -> Union[TICCodec, PromptedCodec]:
    """An untrained model of a named config."""
    if name not in CONFIGS:
        raise KeyError(f"unknown config {name!r}; known: {sorted(CONFIGS)}")
    cfg = CONFIGS[name]
    base = TICCodec(CodecConfig.from_dict(cfg["codec"]))
    if not prompted:
        return base
    return PromptedCodec(base, cfg["rates"], base_rate, PromptConfig.from_dict(cfg["prompt"]))


def checkpoint_path(name: str) -> Path:
    if name not in CHECKPOINTS:
        known = ", ".join(sorted(CHECKPOINTS)) or "none shipped yet"
        raise KeyError(f"unknown checkpoint {name!r} (known: {known}); pass a file path instead")
    return CHECKPOINT_DIR / CHECKPOINTS[name].file


def load(name_or_path: str, device: str = "cpu") -> LoadedCodec:
    """Load a named (sha256-checked) or path-given checkpoint; ``.model`` is a variable-rate codec.

    A bare base checkpoint is wrapped as a single-rate :class:`PromptedCodec`, so callers see one interface.
    Returns a :class:`lpm.checkpoints.LoadedCodec` (``.model``, ``.model_id``, ``.config``, ``.budget``; it
    also unpacks as ``model, info = zoo.load(...)``).
    """
    expected: Optional[str] = None
    path = Path(name_or_path)
    if name_or_path in CHECKPOINTS:
        path, expected = checkpoint_path(name_or_path), CHECKPOINTS[name_or_path].sha256
    elif not path.exists():
        link = broken_link(path)  # say what is wrong with the link rather than "no such name"
        if link:
            raise FileNotFoundError(f"checkpoint {name_or_path!r} is {link}")
        known = ", ".join(sorted(CHECKPOINTS)) or "none shipped yet"
        raise FileNotFoundError(f"no checkpoint file or zoo name {name_or_path!r} (zoo names: {known})")
    loaded = load_codec(path, expected_sha256=expected, device=device)
    if isinstance(loaded.model, TICCodec):
        rate = loaded.base_rate
        loaded = loaded.replace_model(PromptedCodec(loaded.model, rates=[rate], base_rate=rate).eval())
    return loaded
