"""Model checkpoints: safetensors files that carry their config, a format version and the commit.

Loading never executes pickled code (``safetensors``). A file holds either a bare base codec
(``kind="tic"``) or a variable-rate codec (``kind="prompted"``: base + prompt modules). Metadata (all
strings, as safetensors requires)::

    lpm_format     "1"
    kind           "tic" | "prompted" | "rate_conditioned" | "gain_units" (the same-backbone baselines)
    codec_config   JSON of CodecConfig
    base_rate      the λ the base was trained at
    rates          JSON list of λ (prompted only)
    prompt_config  JSON of PromptConfig (prompted only)
    git_commit, lpm_version, torch   provenance
    meta           free JSON (training budget, data, notes)

``half=True`` stores floating-point weights as float16 except the entropy models (their CDF tables are
integers and stay exact; their density parameters stay float32), and loading casts back to float32.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Optional, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lpm.models import CodecConfig, GainUnitCodec, PromptConfig, PromptedCodec, RateConditionedCodec, TICCodec
from lpm.provenance import environment

__all__ = ["CHECKPOINT_FORMAT", "CheckpointError", "save_codec", "load_codec", "read_metadata", "file_sha256"]

CHECKPOINT_FORMAT = 1
Codec = Union[TICCodec, PromptedCodec, RateConditionedCodec, GainUnitCodec]
KINDS = ("tic", "prompted", "rate_conditioned", "gain_units")


class CheckpointError(ValueError):
    """A checkpoint that is not ours, of another format version, or that does not fit its config."""


def file_sha256(path: Union[str, os.PathLike]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _keep_fp32(name: str) -> bool:
    return "entropy_bottleneck" in name or "gaussian_conditional" in name


def save_codec(
    path: Union[str, os.PathLike],
    model: Codec,
    *,
    meta: Optional[dict[str, Any]] = None,
    half: bool = False,
) -> str:
    """Write ``model`` (with up-to-date entropy tables) to ``path`` atomically; returns the file's sha256."""
    path = Path(path)
    if isinstance(model, PromptedCodec):
        base = model.base
        md = {
            "kind": "prompted",
            "rates": json.dumps(model.rates),
            "base_rate": repr(model.base_rate),
            "prompt_config": json.dumps(model.prompt_config.to_dict()),
        }
    elif isinstance(model, RateConditionedCodec):
        base = model.base
        md = {
            "kind": "rate_conditioned",
            "rates": json.dumps(model.rates),
            "base_rate": repr(model.base_rate),
            "prompt_config": json.dumps(model.prompt_config.to_dict()),
            "lambda_range": json.dumps(list(model.lambda_range)),
        }
    elif isinstance(model, GainUnitCodec):
        base = model.base
        md = {"kind": "gain_units", "rates": json.dumps(model.rates), "base_rate": repr(model.base_rate)}
    elif isinstance(model, TICCodec):
        base = model
        rate = (meta or {}).get("base_rate")
        if rate is None:
            raise ValueError("saving a bare base codec needs meta={'base_rate': λ, ...}")
        md = {"kind": "tic", "base_rate": repr(float(rate))}
    else:
        raise TypeError(f"cannot save a {type(model).__name__}")
    base.update(force=True)
    env = environment()
    md.update(
        lpm_format=str(CHECKPOINT_FORMAT),
        codec_config=json.dumps(base.config.to_dict()),
        git_commit=env["git_commit"],
        lpm_version=env["lpm_version"],
        torch=env["torch"],
        meta=json.dumps(meta or {}),
    )
    tensors = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        if half and v.is_floating_point() and not _keep_fp32(k):
            v = v.half()
        tensors[k] = v.contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=md)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a checkpoint is an ordinary shared file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return file_sha256(path)


def read_metadata(path: Union[str, os.PathLike]) -> dict[str, str]:
    """The checkpoint's metadata, validated (raises :class:`CheckpointError`)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            md = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a safetensors checkpoint ({str(e).splitlines()[0]})") from None
    if "lpm_format" not in md:
        raise CheckpointError(f"{path}: not an lpm checkpoint (no lpm_format metadata)")
    if md["lpm_format"] != str(CHECKPOINT_FORMAT):
        raise CheckpointError(
            f"{path}: checkpoint format {md['lpm_format']} is not supported by this lpm (reads {CHECKPOINT_FORMAT})"
        )
    if md.get("kind") not in KINDS:
        raise CheckpointError(f"{path}: unknown checkpoint kind {md.get('kind')!r}")
    return md


def load_codec(
    path: Union[str, os.PathLike],
    *,
    expected_sha256: Optional[str] = None,
    device: Union[str, torch.device] = "cpu",
) -> tuple[Codec, dict[str, Any]]:
    """Load a checkpoint written by :func:`save_codec`. Returns ``(model in eval mode, info)``.

    ``info`` holds the parsed metadata plus ``sha256``. ``expected_sha256`` (e.g. from the zoo) is checked
    first; any mismatch between file and config is a :class:`CheckpointError` with a one-line message.
    """
    path = Path(path)
    md = read_metadata(path)
    digest = file_sha256(path)
    if expected_sha256 is not None and digest != expected_sha256:
        raise CheckpointError(f"{path}: sha256 {digest[:16]}… does not match the expected {expected_sha256[:16]}…")
    try:
        cfg = CodecConfig.from_dict(json.loads(md["codec_config"]))
        base_rate = float(md["base_rate"])
        base = TICCodec(cfg)
        if md["kind"] == "prompted":
            model: Codec = PromptedCodec(
                base,
                rates=json.loads(md["rates"]),
                base_rate=base_rate,
                prompt_config=PromptConfig.from_dict(json.loads(md["prompt_config"])),
            )
        elif md["kind"] == "rate_conditioned":
            model = RateConditionedCodec(
                base,
                json.loads(md["rates"]),
                PromptConfig.from_dict(json.loads(md["prompt_config"])),
                tuple(json.loads(md["lambda_range"])),
            )
        elif md["kind"] == "gain_units":
            model = GainUnitCodec(base, json.loads(md["rates"]), gain_init="ones")
        else:
            model = base
        meta = json.loads(md.get("meta", "{}"))
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: invalid checkpoint metadata ({e})") from None
    state = load_file(str(path))
    own = model.state_dict()
    state = {k: (v.to(own[k].dtype) if k in own and v.is_floating_point() else v) for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = " ".join(str(e).split())[:300]
        raise CheckpointError(f"{path}: weights do not fit the stored config: {first}") from None
    model.eval().to(device)
    info = {**md, "meta": meta, "sha256": digest, "base_rate": base_rate, "path": str(path)}
    return model, info
