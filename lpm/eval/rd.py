"""Rate–distortion evaluation from real bitstreams, resumable, with provenance.

For every rate and image, :func:`evaluate_codec` does exactly what a user of ``lpm compress`` /
``lpm decompress`` does, and measures it::

    image ─read_image─► x (3,H,W) ─encode_image─► CompressedImage ─fileformat.encode─► bytes (.lpm)
        bytes ─fileformat.decode─► CompressedImage ─decode_image─► x̂ (3,H,W)

* **bpp** = 8 · (bytes of the complete ``.lpm`` file: magic, header, string lengths, strings, CRC) / (H·W);
  the payload-only figure (entropy-coded strings alone) is recorded too (``bpp_payload``).
* **PSNR-RGB** on 8-bit images (:func:`lpm.eval.metrics.psnr`): ``round(clamp(x)·255)`` against
  ``round(clamp(x̂)·255)``, MSE over the three channels. x̂ is what ``lpm decompress`` writes
  (:func:`lpm.data.as_written`): for a grey image, which :func:`lpm.data.read_image` replicates to RGB, that is
  the luma of the decoded channels, replicated the same way (lpm < 0.3 measured the codec's raw three channels,
  0.7 dB lower on a grey Kodak image).
* **MS-SSIM-RGB** (:func:`lpm.eval.metrics.ms_ssim_rgb`): :func:`pytorch_msssim.ms_ssim` with
  ``data_range=1`` on the same 8-bit-rounded images divided by 255; ``NaN`` when a side is shorter than
  161 pixels (5 scales of an 11-pixel window do not fit), and such images are left out of the per-rate
  MS-SSIM mean.
* **encoding_time / decoding_time**: wall seconds of ``encode_image + fileformat.encode`` and
  ``fileformat.decode + decode_image`` (both end with host-side bytes/tensors, so CUDA work is included).

Per-rate numbers are means over images (PSNR is averaged per image in dB, as CompressAI does).

Outputs in ``out_dir`` (optional):

* ``<name>_per_image.csv`` — one row per (image, rate), appended and flushed as soon as it is measured
  (columns :data:`CSV_FIELDS`). A run that is interrupted and started again **resumes**: rows already in
  the file for the same image path and bytes (``image_sha256``), rate, checkpoint sha256, ``.lpm`` format
  version and measurement (:data:`MEASURE_VERSION`) are reused, not recomputed (a half-written last line is
  discarded). Rows of other checkpoints may share the file; they are ignored. A CSV of lpm 0.1 (format version
  1 streams, no ``lpm_format`` column) is moved aside to ``<name>_per_image.format1.csv``, one of lpm 0.2 to
  ``.unhashed.csv`` (no ``image_sha256``) or ``.measure1.csv`` (no ``measure``), and the set measured again.
* ``<name>.json`` — CompressAI's results format ``{"name", "description", "results": {"bpp",
  "psnr-rgb", "ms-ssim-rgb", "encoding_time", "decoding_time", "rate", ...}, "meta": {...}}``; ``meta``
  records the environment (:func:`lpm.provenance.environment`), the checkpoint sha256 and training budget,
  the data set and its manifest sha256, the image count and the bpp definition. ``NaN`` is written as
  ``null`` (strict JSON).
* ``<name>_streams/`` — the ``.lpm`` files themselves with ``keep_streams=True``.

Without a checkpoint (``checkpoint_info=None``) the model is identified by the sha256 of its state dict
(``"state:<hex>"`` in the ``checkpoint_sha256`` fields).
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import torch

from lpm import fileformat
from lpm.codec import decode_image, encode_image
from lpm.data import as_written, find_images, images_sha256, manifest_checksum, read_image, sha256_file, to_uint8
from lpm.eval.metrics import MS_SSIM_MIN_SIDE, ms_ssim_rgb, psnr
from lpm.fsutil import open_append
from lpm.jsonio import strict_json, write_json
from lpm.models import PromptedCodec
from lpm.provenance import environment

__all__ = ["evaluate_codec", "CSV_FIELDS", "BPP_DEFINITION", "MEASURE_VERSION", "state_sha256"]

#: What ``bpp`` means in every results file this module writes.
BPP_DEFINITION = "8*file bytes/pixels (header+CRC included)"

#: Columns of ``<name>_per_image.csv``.
CSV_FIELDS = (
    "image",
    "image_sha256",
    "rate",
    "checkpoint_sha256",
    "lpm_format",
    "measure",
    "height",
    "width",
    "channels",
    "bit_depth",
    "bytes",
    "payload_bytes",
    "bpp",
    "bpp_payload",
    "psnr_rgb",
    "ms_ssim_rgb",
    "encoding_time",
    "decoding_time",
    "stream",
)

_NUMERIC = ("bpp", "bpp_payload", "psnr_rgb", "ms_ssim_rgb", "encoding_time", "decoding_time")
_INTS = ("lpm_format", "measure", "height", "width", "channels", "bit_depth", "bytes", "payload_bytes")
#: What a row's PSNR/MS-SSIM were measured on (column ``measure``, ``meta["measure"]``): 2 = the decoded file as
#: ``lpm decompress`` writes it (:func:`lpm.data.as_written`; a grey image's luma). lpm 0.2 measured the codec's
#: three raw channels (version 1, no column): its rows are not reused.
MEASURE_VERSION = 2
#: Columns of the per-image CSVs of lpm 0.1 (format version 1 streams, no ``lpm_format`` column).
_CSV_FIELDS_V1 = tuple(f for f in CSV_FIELDS if f not in ("lpm_format", "image_sha256", "measure"))
#: Columns of the first per-image CSVs of lpm 0.2 (no ``image_sha256``: a row could not tell its image's content).
_CSV_FIELDS_0_2 = tuple(f for f in CSV_FIELDS if f not in ("image_sha256", "measure"))
#: Columns of the later per-image CSVs of lpm 0.2 (no ``measure``: grey images measured on the raw channels).
_CSV_FIELDS_0_2_HASHED = tuple(f for f in CSV_FIELDS if f != "measure")

PathLike = Union[str, os.PathLike]


# ---------------------------------------------------------------------------------------------- helpers
def state_sha256(model: torch.nn.Module) -> str:
    """sha256 over the names, dtypes, shapes and bytes of a model's state dict (sorted by name)."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        v = v.detach().cpu().contiguous().reshape(-1)
        h.update(f"{k}|{v.dtype}|{tuple(v.shape)}|".encode())
        h.update(v.view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()


def _image_list(image_dir_or_paths: Union[PathLike, Iterable[PathLike]]) -> list[Path]:
    if isinstance(image_dir_or_paths, (str, os.PathLike)):
        p = Path(image_dir_or_paths)
        paths = find_images(p) if p.is_dir() else [p]
    else:
        paths = [Path(q) for q in image_dir_or_paths]
    if not paths:
        raise ValueError("no images to evaluate")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"image file(s) not found: {', '.join(missing[:5])}")
    return [p.resolve() for p in paths]


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "lpm"


def _rate_key(rate: float) -> str:
    return repr(float(rate))


def _read_rows(csv_path: Path) -> list[dict[str, Any]]:
    """Rows of an existing per-image CSV (a half-written last line is cut off the file and dropped)."""
    if csv_path.is_symlink():  # it is truncated and appended to: never through a link
        raise OSError(f"{csv_path}: is a symbolic link; lpm does not append through links (remove it)")
    if not csv_path.is_file():
        return []
    data = csv_path.read_bytes()
    if data and not data.endswith(b"\n"):  # interrupted mid-row: drop the partial line from the file too
        cut = data.rfind(b"\n") + 1
        with open(csv_path, "r+b") as f:
            f.truncate(cut)
        data = data[:cut]
    rows = []
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None:
            return []
        old = {_CSV_FIELDS_V1: ("format1", "results of .lpm format version 1 files",
                                f"with format version {fileformat.FORMAT_VERSION}"),
               _CSV_FIELDS_0_2: ("unhashed", "rows without the sha256 of their images (lpm 0.2)",
                                 "with each image's sha256 recorded"),
               _CSV_FIELDS_0_2_HASHED: ("measure1", "rows measured on the codec's raw channels (lpm 0.2; a grey "
                                        "image's PSNR was not that of its decoded file)",
                                        "on the decoded files")}.get(tuple(reader.fieldnames))
        if old is not None:  # rows this lpm cannot reuse: keep them aside
            f.close()
            tag, what, how = old
            aside = csv_path.with_name(f"{csv_path.stem}.{tag}.csv")
            n = 1
            while aside.exists():
                n += 1
                aside = csv_path.with_name(f"{csv_path.stem}.{tag}-{n}.csv")
            os.replace(csv_path, aside)
            warnings.warn(f"{csv_path} holds {what}; moved to {aside.name}, measuring again {how}", stacklevel=3)
            return []
        if tuple(reader.fieldnames) != CSV_FIELDS:
            raise ValueError(
                f"{csv_path}: columns {reader.fieldnames} are not those this lpm writes ({list(CSV_FIELDS)}); "
                "move the file away or choose another name"
            )
        for raw in reader:
            try:
                row: dict[str, Any] = dict(raw)
                row["rate"] = float(raw["rate"])
                for k in _INTS:
                    row[k] = int(raw[k])
                for k in _NUMERIC:
                    row[k] = float(raw[k])
            except (TypeError, ValueError, KeyError):
                continue  # a damaged row: it is recomputed
            rows.append(row)
    return rows


def _nan_to_none(v: float) -> Optional[float]:
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else v


def _mean(values: Sequence[float]) -> float:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else float("nan")


# ---------------------------------------------------------------------------------------------- main
def _measure(
    model: PromptedCodec, model_id: str, path: Path, rate: float, device: torch.device,
    max_pixels: Optional[int] = None,
) -> tuple[dict[str, Any], bytes]:
    x, info = read_image(path, max_pixels=max_pixels)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    data = fileformat.encode(encode_image(model, model_id, x, info, rate))
    sync()
    t1 = time.perf_counter()
    x_hat, _ = decode_image(model, model_id, fileformat.decode(data))
    sync()
    t2 = time.perf_counter()
    c = fileformat.decode(data)
    payload = sum(len(s) for s in c.strings)
    npix = info.height * info.width
    # What the user's decoded file holds (lpm decompress: a grey source comes back grey, as the luma of the three
    # decoded channels), replicated to RGB as read_image does with the grey original; then round(clamp(x)·255).
    a8, b8 = to_uint8(x), to_uint8(as_written(x_hat, info).expand(3, -1, -1))  # (H, W, 3) uint8
    row = {
        "image": str(path),
        "rate": float(rate),
        "height": info.height,
        "width": info.width,
        "channels": info.channels,
        "bit_depth": info.bit_depth,
        "bytes": len(data),
        "payload_bytes": payload,
        "bpp": 8.0 * len(data) / npix,
        "bpp_payload": 8.0 * payload / npix,
        "psnr_rgb": psnr(a8, b8),
        "ms_ssim_rgb": ms_ssim_rgb(a8, b8),
        "encoding_time": t1 - t0,
        "decoding_time": t2 - t1,
    }
    return row, data


def evaluate_codec(
    model: PromptedCodec,  # or any codec with rate_range/compress/decompress(…, rate) (the baselines)
    image_dir_or_paths: Union[PathLike, Iterable[PathLike]],
    rates: Iterable[float],
    *,
    checkpoint_info: Optional[dict[str, Any]] = None,
    out_dir: Optional[PathLike] = None,
    name: Optional[str] = None,
    dataset_name: Optional[str] = None,
    manifest: Optional[PathLike] = None,
    device: Union[str, torch.device] = "cpu",
    progress: bool = True,
    keep_streams: bool = False,
    max_pixels: Optional[int] = None,
) -> dict[str, Any]:
    """Evaluate ``model`` at every rate on every image from real ``.lpm`` bytes (see the module docstring).

    Args:
        model: the variable-rate codec (moved to ``device`` and put in eval mode; entropy tables must be
            built, as they are for a loaded checkpoint).
        image_dir_or_paths: a directory (its images via :func:`lpm.data.find_images`), one image file, or
            a list of image files; any sizes, PNG/JPEG/…, grey or colour, 8 or 16 bits.
        rates: λ values in the model's range; trained or not (continuous rates work).
        model: a variable-rate codec, or a :class:`lpm.checkpoints.LoadedCodec` (then ``checkpoint_info`` is
            taken from it).
        checkpoint_info: the ``info`` of :func:`lpm.checkpoints.load_codec` / :func:`lpm.zoo.load`
            (``sha256``, ``path``, ``meta`` with ``budget``). ``None``: the model is identified by
            :func:`state_sha256` and its budget is reported as unknown.
        out_dir: where the CSV/JSON (and streams) go; ``None`` writes nothing and cannot resume.
        name: results name (file stem); default: the checkpoint file's stem, else ``"lpm"``.
        dataset_name, manifest: recorded in ``meta`` (the manifest's own sha256 identifies the set).
        device: where the codec runs.
        progress: show a tqdm bar.
        keep_streams: also write each ``.lpm`` file to ``out_dir/<name>_streams/``.
        max_pixels: refuse (``ValueError``) images larger than this, before coding them.

    Returns:
        the results dict (also written to ``out_dir/<name>.json``).
    """
    from lpm.checkpoints import LoadedCodec

    if isinstance(model, LoadedCodec):
        checkpoint_info, model = checkpoint_info or model.info, model.model
    rates = [float(r) for r in rates]
    if not rates:
        raise ValueError("no rates to evaluate")
    for r in rates:
        model.scalar_rate(r)  # the codec's one rate check (ValueError: outside the range / not trained)
    paths = _image_list(image_dir_or_paths)
    device = torch.device(device)
    model.eval().to(device)

    info = checkpoint_info or {}
    sha = info.get("sha256") or f"state:{state_sha256(model)}"
    model_id = fileformat.model_id_from_sha256(sha.split(":")[-1])
    budget = (info.get("meta") or {}).get("budget")
    if name is None:
        name = Path(info["path"]).stem if info.get("path") else "lpm"
    name = _safe_name(name)

    out = Path(out_dir) if out_dir is not None else None
    csv_path = stream_dir = None
    digests = {str(p): sha256_file(p) for p in paths}  # a row is reused only for the same bytes of its image
    done: dict[tuple[str, str], dict[str, Any]] = {}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        csv_path = out / f"{name}_per_image.csv"
        for row in _read_rows(csv_path):
            if (row["checkpoint_sha256"] == sha and row["lpm_format"] == fileformat.FORMAT_VERSION
                    and row["measure"] == MEASURE_VERSION and row["image_sha256"] == digests.get(row["image"])):
                done.setdefault((row["image"], _rate_key(row["rate"])), row)
        if keep_streams:
            stream_dir = out / f"{name}_streams"
            stream_dir.mkdir(exist_ok=True)
    elif keep_streams:
        raise ValueError("keep_streams=True needs an out_dir")

    todo = [(r, p) for r in rates for p in paths]
    n_done = sum((str(p), _rate_key(r)) in done for r, p in todo)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), initial=n_done, desc=f"eval {name}", unit="img")

    csv_file = writer = None
    if csv_path is not None and n_done < len(todo):
        new = not csv_path.is_file() or csv_path.stat().st_size == 0
        csv_file = open_append(csv_path)
        writer = csv.DictWriter(csv_file, fieldnames=CSV_FIELDS)
        if new:
            writer.writeheader()
            csv_file.flush()
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    try:
        for ri, rate in enumerate(rates):
            for ii, path in enumerate(paths):
                key = (str(path), _rate_key(rate))
                if key in done:
                    rows[key] = done[key]
                    continue
                if key in rows:  # the same image listed twice
                    continue
                row, data = _measure(model, model_id, path, rate, device, max_pixels)
                row["checkpoint_sha256"] = sha
                row["image_sha256"] = digests[str(path)]
                row["lpm_format"] = fileformat.FORMAT_VERSION
                row["measure"] = MEASURE_VERSION
                row["stream"] = ""
                if stream_dir is not None:
                    fname = f"{ii:04d}_{_safe_name(path.stem)}_r{ri:02d}_{rate:.6g}.lpm"
                    (stream_dir / fname).write_bytes(data)
                    row["stream"] = str(Path(stream_dir.name) / fname)
                rows[key] = row
                if writer is not None:
                    writer.writerow({k: row[k] for k in CSV_FIELDS})
                    csv_file.flush()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(rate=f"{rate:.4g}", bpp=f"{row['bpp']:.3f}", psnr=f"{row['psnr_rgb']:.2f}")
    finally:
        if csv_file is not None:
            csv_file.close()
        if bar is not None:
            bar.close()

    keys = ("bpp", "bpp_payload", "psnr-rgb", "ms-ssim-rgb", "encoding_time", "decoding_time", "rate")
    results: dict[str, list] = {k: [] for k in keys}
    for rate in rates:
        per = [rows[(str(p), _rate_key(rate))] for p in paths]
        results["bpp"].append(_mean([r["bpp"] for r in per]))
        results["bpp_payload"].append(_mean([r["bpp_payload"] for r in per]))
        results["psnr-rgb"].append(_mean([r["psnr_rgb"] for r in per]))
        results["ms-ssim-rgb"].append(_nan_to_none(_mean([r["ms_ssim_rgb"] for r in per])))
        results["encoding_time"].append(_mean([r["encoding_time"] for r in per]))
        results["decoding_time"].append(_mean([r["decoding_time"] for r in per]))
        results["rate"].append(rate)
    first = [rows[(str(p), _rate_key(rates[0]))] for p in paths]
    n_msssim = sum(min(r["height"], r["width"]) >= MS_SSIM_MIN_SIDE for r in first)

    meta: dict[str, Any] = dict(environment(device))
    meta.update(
        checkpoint_sha256=sha,
        lpm_format=fileformat.FORMAT_VERSION,
        measure=MEASURE_VERSION,
        checkpoint_path=info.get("path"),
        checkpoint_budget=budget if budget is not None else "unknown (no training budget recorded)",
        model_id=model_id,
        model_class=type(model).__name__,
        base_rate=getattr(model, "base_rate", None),
        trained_rates=list(getattr(model, "rates", [])),
        dataset=dataset_name,
        num_images=len(paths),
        images_sha256=images_sha256(paths, digests),
        ms_ssim_images=n_msssim,
        bpp_definition=BPP_DEFINITION,
        psnr_definition="PSNR of round(x*255) vs round(x_hat*255) over RGB, averaged over images (dB)",
        ms_ssim_definition=f"pytorch_msssim.ms_ssim(data_range=1) on 8-bit-rounded RGB; images with a side "
                           f"< {MS_SSIM_MIN_SIDE} px are left out",
        time_definition="seconds per image: encode_image+fileformat.encode / fileformat.decode+decode_image",
    )
    if manifest is not None:
        meta["dataset_manifest"] = str(manifest)
        meta["dataset_manifest_sha256"] = manifest_checksum(manifest)
    if csv_path is not None:
        meta["per_image_csv"] = csv_path.name
    description = (
        f"lpm {type(model).__name__}, real-bitstream evaluation on {dataset_name or f'{len(paths)} images'}; "
        f"training budget: {meta['checkpoint_budget']}"
    )
    result = {"name": name, "description": description, "results": results, "meta": meta}
    result = strict_json(result)
    if out is not None:
        write_json(out / f"{name}.json", result)
    return result
