"""Model checkpoints (used by inference, evaluation and training alike): safetensors files that carry their config, a format version and the commit.

Loading never executes pickled code (``safetensors``). A file holds either a bare base codec
(``kind="tic"``) or a variable-rate codec (``kind="prompted"``: base + prompt modules). Metadata (all
strings, as safetensors requires)::

    lpm_format     "1"
    kind           "tic" | "prompted" | "lora" | "rate_conditioned" | "gain_units" (the same-backbone baselines)
    codec_config   JSON of CodecConfig
    base_rate      the λ the base was trained at
    rates          JSON list of λ (prompted only)
    prompt_config  JSON of PromptConfig (prompted only)
    lora_config    JSON of LoRAConfig (lora only; rank, target layers, transforms)
    git_commit, lpm_version, torch   provenance
    meta           free JSON (training budget, data, notes)

``half=True`` stores floating-point weights as float16 except the entropy models (their CDF tables are
integers and stay exact; their density parameters stay float32), and loading casts back to float32.

Loading trusts nothing in the file. Before any real model is built (see :func:`load_codec`):

* the path must be a non-empty regular file whose safetensors header parses (safetensors itself refuses
  headers whose offsets do not cover the file exactly); pickles are refused, never unpickled;
* metadata values are strings; config fields are JSON objects/lists of the right types, at most
  :data:`MAX_CONFIG_CHARS` characters; ``CodecConfig``/``PromptConfig`` enforce
  :data:`lpm.models.base.CONFIG_LIMITS` (channels 1..1024, 0..64 Swin blocks per stage, 1..64 heads that
  divide ``N``, windows 1..32 that the prompt stride divides, odd kernels 1..15, ``0 < mlp_ratio <= 16``,
  ``0 <= drop_path < 1``, prompt widths 1..1024, hidden widths 0..1024); a ladder holds 1..:data:`MAX_RATES`
  distinct finite positive λ, ``base_rate`` is finite positive (and on the ladder of a prompted codec),
  ``lambda_range`` is ``[λ_min < λ_max]``; ``meta`` is a JSON object;
* the tensors listed in the header must be exactly those of the model the config describes (names, shapes,
  float vs. integer dtypes), checked against models built on the ``meta`` device (no memory) after a cheap
  lower bound (one Swin block per stage) has shown the file can hold that many tensors at 2 bytes a value;
  building may allocate at most :data:`MAX_EXTRA_BUILD_BYTES` besides the stored tensors.

After loading, weights must be finite and compressai's CDF tables valid (the rANS coder trusts them). Every
failure is a :class:`CheckpointError` (a ``ValueError``) with a one-line message naming the path.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
from compressai.entropy_models import EntropyModel
from safetensors.torch import load_file, save_file
from torch import nn

from lpm.layers import SwinStage
from lpm.models import (
    CODEC_KINDS,
    RATE_REL_TOL,
    CodecConfig,
    LayerAdaptivePromptModule,
    LoRAConfig,
    PromptConfig,
    TICCodec,
    VariableRateCodec,
    check_ladder,
)
from lpm.entropy import table_problem
from lpm.fsutil import atomic_save, printable
from lpm.fsutil import one_line as _one_line
from lpm.provenance import environment

__all__ = [
    "LoadedCodec", "CHECKPOINT_FORMAT", "CheckpointError", "CheckpointNotFoundError", "save_codec", "load_codec", "read_metadata",
    "file_sha256", "MAX_RATES", "MAX_EXTRA_BUILD_BYTES", "MAX_META_CHARS", "MAX_BUDGET_CHARS",
]

CHECKPOINT_FORMAT = 1
Codec = Union[TICCodec, VariableRateCodec]
KINDS = tuple(CODEC_KINDS)  # "tic" (a bare backbone) and every variable-rate kind
#: Most λ values a checkpoint's ladder may hold (each prompted rate is one prompt module).
MAX_RATES = 64
#: Most characters of a config-like metadata field (codec_config, prompt_config, rates, lambda_range).
MAX_CONFIG_CHARS = 1 << 16
#: Most characters of the free ``meta`` JSON (ledgers of long runs fit many times over) and of its ``budget``
#: text, which is printed and shown in every figure's footnote (a checkpoint whose budget is megabytes long is
#: refused, not printed).
MAX_META_CHARS = 8 << 20
MAX_BUDGET_CHARS = 1 << 14
#: Most bytes that building a checkpoint's model may allocate besides its stored tensors (attention index
#: tables, which grow as ``window**4`` per Swin block).
MAX_EXTRA_BUILD_BYTES = 256 << 20


class CheckpointError(ValueError):
    """A checkpoint that is not ours, of another format version, or that does not fit its config."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No file at the checkpoint path (also a ``FileNotFoundError``)."""


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
    if isinstance(model, TICCodec):
        base = model
        rate = (meta or {}).get("base_rate")
        if rate is None:
            raise ValueError("saving a bare base codec needs meta={'base_rate': λ, ...}")
        md = {"kind": "tic", "base_rate": repr(float(rate))}
    elif isinstance(model, VariableRateCodec) and CODEC_KINDS.get(model.kind) is type(model):
        base = model.base  # type: ignore[assignment]
        md = {"kind": model.kind, **model.checkpoint_fields()}
    else:
        raise TypeError(f"cannot save a {type(model).__name__} (known kinds: {sorted(CODEC_KINDS)})")
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
    atomic_save(path, lambda tmp: save_file(tensors, tmp, metadata=md))
    return file_sha256(path)


def _open(path: Path) -> tuple[dict[str, str], dict[str, tuple[str, tuple[int, ...]]], int]:
    """``(metadata, {tensor name: (dtype, shape)}, file size)`` from the safetensors header alone (no tensor
    data is read). Every way a path can fail to be a safetensors file is a :class:`CheckpointError`."""
    from safetensors import safe_open

    if not path.exists():
        raise CheckpointNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a regular file")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            magic = f.read(8)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({e.strerror or _one_line(e)})") from None
    if size == 0:
        raise CheckpointError(f"{path}: empty file, not a checkpoint")
    try:
        with safe_open(str(path), framework="pt") as f:
            md = f.metadata() or {}
            header = {}
            for name in f.keys():
                sl = f.get_slice(name)
                header[name] = (str(sl.get_dtype()), tuple(int(d) for d in sl.get_shape()))
    except Exception as e:  # noqa: BLE001 -- whatever the parser says, the file is not a checkpoint of ours
        if _pickled(magic, size):
            raise CheckpointError(f"{path}: a pickled PyTorch file (torch.save), not a safetensors checkpoint; "
                                  f"lpm never unpickles checkpoints") from None
        raise CheckpointError(f"{path}: not a safetensors checkpoint ({_one_line(e)})") from None
    return md, header, size


def _pickled(magic: bytes, size: int) -> bool:
    """Whether a file that is not safetensors starts like ``torch.save``'s output (a zip archive, or a pickle of
    protocol 2 to 5) and not like a broken safetensors file: its first 8 bytes, read as safetensors' header
    length, would not fit the file (a cut or damaged checkpoint whose length happens to start with 0x80 or "PK"
    was called a pickle)."""
    looks = magic[:4] == b"PK\x03\x04" or (magic[:1] == b"\x80" and magic[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"))
    return looks and (len(magic) < 8 or int.from_bytes(magic, "little") > size - 8)


def _check_metadata(path: Path, md: Any) -> dict[str, str]:
    if not isinstance(md, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in md.items()):
        raise CheckpointError(f"{path}: checkpoint metadata must map strings to strings")
    if "lpm_format" not in md:
        raise CheckpointError(f"{path}: not an lpm checkpoint (no lpm_format metadata)")
    if md["lpm_format"] != str(CHECKPOINT_FORMAT):
        raise CheckpointError(
            f"{path}: checkpoint format {md['lpm_format'][:20]!r} is not supported by this lpm "
            f"(reads {CHECKPOINT_FORMAT})"
        )
    if md.get("kind") not in KINDS:
        raise CheckpointError(f"{path}: unknown checkpoint kind {md.get('kind', '')[:40]!r}")
    return md


def read_metadata(path: Union[str, os.PathLike]) -> dict[str, str]:
    """The checkpoint's metadata, validated (raises :class:`CheckpointError`; a missing file raises
    :class:`CheckpointNotFoundError`, which is also a ``FileNotFoundError``)."""
    path = Path(path)
    md, _, _ = _open(path)
    return _check_metadata(path, md)


# ---------------------------------------------------------------------------------------------------- parsing
def _json(path: Path, md: dict[str, str], key: str, kind: type, default: Optional[str] = None, limit: int = 0) -> Any:
    """Metadata field ``key`` parsed as JSON of type ``kind`` (``limit``: most characters, 0 = any)."""
    if key not in md and default is None:
        raise CheckpointError(f"{path}: invalid checkpoint metadata (no {key!r} field)")
    text = md.get(key, default)
    if limit and len(text) > limit:
        raise CheckpointError(f"{path}: invalid checkpoint metadata ({key} is {len(text)} characters; at most {limit})")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: invalid checkpoint metadata ({key} is not JSON: {_one_line(e)[:80]})") from None
    if not isinstance(value, kind):
        raise CheckpointError(f"{path}: invalid checkpoint metadata ({key} must be a JSON "
                              f"{'object' if kind is dict else kind.__name__}, got {type(value).__name__})")
    return value


def _rate(path: Path, what: str, value: Any, text: bool = False) -> float:
    """``value`` (a JSON number, or with ``text`` a string: ``base_rate``) as a finite positive float."""
    number: Optional[float] = None
    if isinstance(value, (str, int, float) if text else (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except (ValueError, OverflowError):
            number = None
    if number is None or not (math.isfinite(number) and number > 0):
        raise CheckpointError(f"{path}: invalid checkpoint metadata ({what} must be a finite positive λ, "
                              f"got {str(value)[:40]!r})")
    return number


def _parse(path: Path, md: dict[str, str]) -> tuple[CodecConfig, dict[str, Any], float, dict[str, Any]]:
    """``(codec config, fields for CODEC_KINDS[kind].from_checkpoint, base_rate, meta)``, all checked against
    the documented bounds (see :data:`CONFIG_LIMITS`, :data:`MAX_RATES`)."""
    kind = md["kind"]
    try:
        cfg = CodecConfig.from_dict(_json(path, md, "codec_config", dict, limit=MAX_CONFIG_CHARS))
    except ValueError as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{path}: invalid checkpoint metadata ({_one_line(e)})") from None
    base_rate = _rate(path, "base_rate", md.get("base_rate"), text=True)
    fields: dict[str, Any] = {}
    if kind != "tic":
        rates = _json(path, md, "rates", list, limit=MAX_CONFIG_CHARS)
        if not 1 <= len(rates) <= MAX_RATES:
            raise CheckpointError(f"{path}: invalid checkpoint metadata (rates must hold 1..{MAX_RATES} λ values, "
                                  f"got {len(rates)})")
        rates = [_rate(path, "every rate", r) for r in rates]
        try:
            rates = check_ladder(rates)
        except ValueError as e:
            raise CheckpointError(f"{path}: invalid checkpoint metadata ({_one_line(e)})") from None
        if kind in ("prompted", "lora") and not any(math.isclose(base_rate, r, rel_tol=RATE_REL_TOL) for r in rates):
            raise CheckpointError(f"{path}: invalid checkpoint metadata (base_rate {base_rate:g} is not in the "
                                  f"rate ladder {rates})")
        fields.update(rates=rates, base_rate=base_rate)
        sub_configs = {"prompted": ("prompt_config", PromptConfig), "rate_conditioned": ("prompt_config", PromptConfig),
                       "lora": ("lora_config", LoRAConfig)}
        if kind in sub_configs and (kind != "lora" or "lora_config" in md):  # lora: default config if absent
            key, config_cls = sub_configs[kind]
            sub = _json(path, md, key, dict, limit=MAX_CONFIG_CHARS)
            try:
                config_cls.from_dict(sub)
            except ValueError as e:
                raise CheckpointError(f"{path}: invalid checkpoint metadata ({_one_line(e)})") from None
            fields[key] = sub
        if kind == "rate_conditioned":
            lr = _json(path, md, "lambda_range", list, limit=MAX_CONFIG_CHARS)
            lr = [_rate(path, "lambda_range", v) for v in lr]
            if len(lr) != 2 or not lr[0] < lr[1]:
                raise CheckpointError(f"{path}: invalid checkpoint metadata (lambda_range must be [λ_min, λ_max] "
                                      f"with λ_min < λ_max, got {lr})")
            fields["lambda_range"] = lr
    meta = _json(path, md, "meta", dict, default="{}", limit=MAX_META_CHARS)
    budget = meta.get("budget")
    if budget is not None and not (isinstance(budget, str) and len(budget) <= MAX_BUDGET_CHARS):
        got = f"{len(budget)} characters" if isinstance(budget, str) else f"a JSON {type(budget).__name__}"
        raise CheckpointError(f"{path}: invalid checkpoint metadata (meta.budget must be a text of at most "
                              f"{MAX_BUDGET_CHARS} characters, got {got})")
    return cfg, fields, base_rate, meta


# ---------------------------------------------------------------------------------------------------- sizes
_DTYPE_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}
_FLOAT_NAMES = {"F64", "F32", "F16", "BF16"}
#: compressai's entropy-coder tables: persistent buffers whose sizes follow the stored weights (resized on
#: load), so their shapes are checked for consistency instead of against a freshly built model.
_TABLES = ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")


def _key(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)


@functools.lru_cache(maxsize=16)
def _blocks_lower_bound(cfg_key: str) -> tuple[int, int]:
    """``(tensors, values)`` held by the Swin blocks of a codec config alone: one block per stage is built on
    the ``meta`` device (no memory) and counted, times the stage's depth (every stage works on ``N``
    channels)."""
    cfg = CodecConfig.from_dict(json.loads(cfg_key))
    stages = [(d, h, cfg.window) for d, h in zip(cfg.enc_depths, cfg.enc_heads)]
    stages += [(d, h, cfg.window) for d, h in zip(cfg.dec_depths, cfg.dec_heads)]
    stages += [(cfg.hyper_depth, cfg.hyper_heads, cfg.hyper_window)] * 2
    per_block: dict[tuple[int, int], tuple[int, int]] = {}
    tensors = values = 0
    for depth, heads, window in stages:
        if depth == 0:
            continue
        if (heads, window) not in per_block:
            with torch.random.fork_rng(devices=[]), torch.device("meta"):
                sd = SwinStage(cfg.N, 1, heads, window, cfg.mlp_ratio, cfg.drop_path, cfg.prompt_stride).state_dict()
            per_block[(heads, window)] = (len(sd), sum(v.numel() for v in sd.values()))
        t, v = per_block[(heads, window)]
        tensors, values = tensors + depth * t, values + depth * v
    return tensors, values


@functools.lru_cache(maxsize=16)
def _prompted_tensor_count(cfg_key: str, pcfg_key: str, n_rates: int) -> int:
    """Tensors of a prompted codec: the backbone plus one prompt module per prompted rate (built on ``meta``)."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        base = TICCodec(CodecConfig.from_dict(json.loads(cfg_key)))
        module = LayerAdaptivePromptModule(base, PromptConfig.from_dict(json.loads(pcfg_key)))
        return len(base.state_dict()) + (n_rates - 1) * len(module.state_dict())


def _extrapolated_tensor_count(kind: str, cfg_key: str, fields: dict[str, Any]) -> Optional[int]:
    """Tensors of a ``kind`` codec with ``fields["rates"]``, from builds on two and three of its rates (every
    kind adds the same tensors per rate): building a long ladder of a deep config on ``meta`` costs minutes
    of Python (a crafted low-rank-adapter file: 131 s), its short ladders a few seconds. ``None`` where
    such a ladder cannot be built (the full build then says why)."""
    rates, base_rate = fields.get("rates"), fields.get("base_rate")
    if not isinstance(rates, list) or len(rates) < 4:
        return None
    others = [r for r in rates if r != base_rate]

    def ladder(k: int) -> list:
        return sorted([base_rate, *others[:k]]) if base_rate in rates else rates[: k + 1]

    try:
        small, more = (len(_layout(kind, cfg_key, _key({**fields, "rates": ladder(k)})).tensors) for k in (1, 2))
    except Exception:  # noqa: BLE001 -- a short ladder this kind refuses: leave the verdict to the full build
        return None
    return small + (len(rates) - len(ladder(1))) * (more - small)


@dataclass(frozen=True)
class _Layout:
    """What a checkpoint's config builds: tensors (name → shape, dtype), entropy-table owners (prefix →
    rows the tables need, ``None``: as many as its ``scale_table``) and bytes allocated beyond the tensors."""

    tensors: dict[str, tuple[tuple[int, ...], torch.dtype]]
    tables: dict[str, Optional[int]]
    extra_bytes: int


@functools.lru_cache(maxsize=16)
def _layout(kind: str, cfg_key: str, fields_key: str) -> _Layout:
    """The codec of ``kind`` built on the ``meta`` device (no memory), described (cached per config). The
    build leaves torch's CPU random state as it was (initialisers draw from it even on ``meta``), so loading
    a checkpoint never changes what a later seeded model or run draws."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        base = TICCodec(CodecConfig.from_dict(json.loads(cfg_key)))
        model = base if kind == "tic" else CODEC_KINDS[kind].from_checkpoint(base, json.loads(fields_key))
    own = model.state_dict()
    tensors, tables = {}, {}
    for name, t in own.items():
        tensors[name] = (tuple(t.shape), t.dtype)
        prefix, _, leaf = name.rpartition(".")
        if leaf in _TABLES:
            m = model.get_submodule(prefix)
            tables[prefix] = None if hasattr(m, "scale_table") else int(m.quantiles.shape[0])
    persistent = sum(t.numel() * t.element_size() for t in own.values())
    allocated = sum(p.numel() * p.element_size() for p in model.parameters())
    allocated += sum(b.numel() * b.element_size() for b in model.buffers())
    return _Layout(tensors, tables, max(0, allocated - persistent))


def _expected_layout(
    path: Path, kind: str, cfg: CodecConfig, fields: dict[str, Any],
    header: dict[str, tuple[str, tuple[int, ...]]], size: int,
) -> None:
    """Check the tensors in the file against what the config builds, before anything real is built.

    In order, each step bounding the cost of the next: (1) the Swin blocks alone (one block per stage built on
    ``meta``) must fit the file's tensor count and its size at 2 bytes (float16) per value; (2) for
    ``prompted``, the backbone plus one prompt module per prompted rate (built on ``meta``) must not have
    far more tensors than the file (so the next step costs what the file's own size allows); (3) the whole
    codec built on ``meta`` must have exactly the file's tensor names, shapes and dtype families (compressai's
    entropy tables: consistent shapes), and what building it for real allocates besides the stored tensors
    (index tables) must stay under :data:`MAX_EXTRA_BUILD_BYTES`."""
    n_file = len(header)
    what = f"the stored config ({kind}, N={cfg.N}, M={cfg.M})"

    def misfit(detail: str) -> CheckpointError:
        return CheckpointError(f"{path}: weights do not fit the stored config: {detail}")

    cfg_key = _key(cfg.to_dict())
    try:
        lb_tensors, lb_values = _blocks_lower_bound(cfg_key)
        if lb_tensors > n_file or 2 * lb_values > size:
            raise misfit(f"{what} needs at least {lb_values:,} values in {lb_tensors:,} tensors; the file holds "
                         f"{n_file:,} tensors in {size:,} bytes")
        if kind == "prompted":  # one base and one module: cheaper than the extrapolation below
            n_expected = _prompted_tensor_count(cfg_key, _key(fields["prompt_config"]), len(fields["rates"]))
            if n_expected > 2 * n_file + 64:  # far more than the file holds: do not even build it on meta
                raise misfit(f"{what} with {len(fields['rates'])} rates has {n_expected:,} tensors; "
                             f"the file holds {n_file:,}")
        elif kind != "tic":
            n_expected = _extrapolated_tensor_count(kind, cfg_key, fields)
            if n_expected is not None and n_expected > 2 * n_file + 64:
                raise misfit(f"{what} with {len(fields['rates'])} rates has {n_expected:,} tensors; "
                             f"the file holds {n_file:,}")
        layout = _layout(kind, cfg_key, _key(fields))
    except CheckpointError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, RuntimeError) as e:
        raise CheckpointError(f"{path}: invalid checkpoint metadata ({_one_line(e)})") from None
    missing = [k for k in layout.tensors if k not in header]
    extra = [k for k in header if k not in layout.tensors]
    if missing or extra:
        parts = []
        for label, names in (("missing", missing), ("unexpected", extra)):
            if names:
                more = ", …" if len(names) > 3 else ""
                parts.append(f"{len(names)} {label} tensor(s) ({', '.join(names[:3])}{more})")
        raise misfit("; ".join(parts))
    tables: dict[str, dict[str, tuple[int, ...]]] = {}
    for name, (shape, dtype) in layout.tensors.items():
        stored, stored_shape = header[name]
        prefix, _, leaf = name.rpartition(".")
        if leaf in _TABLES:
            tables.setdefault(prefix, {})[leaf] = stored_shape
        elif stored_shape != shape:
            raise misfit(f"{name} has shape {list(stored_shape)} in the file, {list(shape)} in {what}")
        ok = stored in _FLOAT_NAMES if dtype.is_floating_point else stored == _DTYPE_NAMES.get(dtype)
        if not ok:
            raise misfit(f"{name} is stored as {stored}, expected {_DTYPE_NAMES.get(dtype, dtype)}")
    for prefix, shapes in tables.items():
        q, o, c = (shapes.get(k) for k in ("_quantized_cdf", "_offset", "_cdf_length"))
        if q is None or o is None or c is None or len(q) != 2 or len(o) != 1 or o != c or q[0] != o[0] or q[1] < 2:
            raise misfit(f"the entropy tables of {prefix} have inconsistent shapes {shapes}")
        rows = layout.tables[prefix]
        if rows is None:
            st = shapes.get("scale_table", ())
            rows = st[0] if len(st) == 1 else -1
        if q[0] != rows or rows < 1:
            raise misfit(f"the entropy tables of {prefix} have {q[0]} rows, expected {rows}")
    if layout.extra_bytes > MAX_EXTRA_BUILD_BYTES:
        raise CheckpointError(f"{path}: the stored config would allocate {layout.extra_bytes / 2**20:.0f} MiB "
                              f"besides its weights (at most {MAX_EXTRA_BUILD_BYTES / 2**20:.0f} MiB)")


def _check_loaded(path: Path, model: nn.Module) -> None:
    """Weights must be finite, and compressai's CDF tables well formed (the rANS coder trusts them)."""
    with torch.no_grad():
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise CheckpointError(f"{path}: weights contain NaN or infinity ({name})")
    for name, m in model.named_modules():
        if not isinstance(m, EntropyModel):
            continue
        if m._quantized_cdf.numel() == 0:
            raise CheckpointError(f"{path}: the entropy tables of {name} are empty")
        problem = table_problem(m)
        if problem is not None:
            raise CheckpointError(f"{path}: the entropy tables of {name} {problem}")


@dataclass(frozen=True)
class LoadedCodec:
    """What :func:`load_codec` (and :func:`lpm.zoo.load`) return: the model and everything known about it.

    ``model`` is in eval mode on the requested device; ``model_id`` is the 16-hex-digit id written into every
    ``.lpm`` stream (first 8 bytes of ``sha256``); ``config`` the backbone's :class:`CodecConfig`; ``budget``
    the training budget the checkpoint records (``None`` if it records none); ``metadata`` the raw (checked)
    safetensors metadata strings; ``meta`` its parsed free-form ``meta`` object.

    For code written against the older ``model, info = zoo.load(...)`` form, a ``LoadedCodec`` unpacks into
    ``(model, info)`` where ``info`` is :attr:`info` (a dict of the metadata plus ``meta``, ``sha256``,
    ``base_rate`` and ``path``).
    """

    model: nn.Module
    path: Path
    sha256: str
    kind: str
    config: CodecConfig
    base_rate: float
    meta: dict[str, Any]
    metadata: dict[str, str]

    @property
    def model_id(self) -> str:
        return self.sha256[:16]

    @property
    def budget(self) -> Optional[str]:
        b = self.meta.get("budget")  # read from the file: printed and shown, so never with control characters
        return printable(str(b)) if b is not None else None

    def budget_label(self) -> str:
        """The budget, or a plain statement that none is recorded (for tables and footnotes)."""
        return self.budget or "unknown (no training budget recorded)"

    @property
    def info(self) -> dict[str, Any]:
        return {**self.metadata, "meta": self.meta, "sha256": self.sha256, "base_rate": self.base_rate,
                "path": str(self.path)}

    def __iter__(self):  # ``model, info = load_codec(...)``
        return iter((self.model, self.info))

    def replace_model(self, model: nn.Module) -> "LoadedCodec":
        """The same record around another model object (e.g. a bare base wrapped as a one-rate codec)."""
        return LoadedCodec(model, self.path, self.sha256, self.kind, self.config, self.base_rate, self.meta,
                           self.metadata)


def load_codec(
    path: Union[str, os.PathLike],
    *,
    expected_sha256: Optional[str] = None,
    device: Union[str, torch.device] = "cpu",
) -> LoadedCodec:
    """Load a checkpoint written by :func:`save_codec` as a :class:`LoadedCodec` (model in eval mode).

    ``expected_sha256`` (e.g. from the zoo) is checked
    first. Nothing is built before the metadata is checked against the documented bounds
    (:data:`~lpm.models.base.CONFIG_LIMITS`, :data:`MAX_RATES`) and the tensors named in the file's header
    against the model the config describes (built on the ``meta`` device, which allocates nothing; see
    :func:`_expected_layout`). Any failure is a :class:`CheckpointError` with a one-line message naming
    ``path``.
    """
    path = Path(path)
    md, header, size = _open(path)
    md = _check_metadata(path, md)
    try:
        digest = file_sha256(path)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({e.strerror or _one_line(e)})") from None
    if expected_sha256 is not None and digest != expected_sha256:
        raise CheckpointError(f"{path}: sha256 {digest[:16]}… does not match the expected {expected_sha256[:16]}…")
    kind = md["kind"]
    cfg, fields, base_rate, meta = _parse(path, md)
    _expected_layout(path, kind, cfg, fields, header, size)
    try:
        with torch.random.fork_rng(devices=[]):  # every weight is loaded below: leave the caller's RNG alone
            base = TICCodec(cfg)
            model: Codec = base if kind == "tic" else CODEC_KINDS[kind].from_checkpoint(base, fields)
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{path}: invalid checkpoint metadata ({_one_line(e)})") from None
    try:
        state = load_file(str(path))
    except Exception as e:  # noqa: BLE001 -- e.g. the file changed or was cut since its header was read
        raise CheckpointError(f"{path}: cannot read the weights ({_one_line(e)})") from None
    own = model.state_dict()
    state = {k: (v.to(own[k].dtype) if k in own and v.is_floating_point() else v) for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
        raise CheckpointError(f"{path}: weights do not fit the stored config: {_one_line(e)}") from None
    _check_loaded(path, model)
    model.eval().to(device)
    return LoadedCodec(model, path, digest, kind, cfg, base_rate, meta, md)
