"""The ``lpm`` command: ``main(argv) -> int``.

    lpm compress IN.png OUT.lpm --model CKPT [--rate λ | --target-bpp B] [--force] [--no-progress]
    lpm decompress IN.lpm OUT.png [--model CKPT] [--force] [--no-progress]  # default: the shipped one it names
    lpm info FILE.lpm
    lpm roundtrip --model CKPT [--data-dir DIR] [--rates λ ...] [--json F [--force]]  # real bpp and PSNR
    lpm models                                                  # the name table
    lpm reproduce [--data-dir DIR] [--smoke]                    # every notebook via papermill (main job)
    lpm data download kodak [--dest DIR]                        # images + sha256 check
    lpm train CONFIG.yaml [--resume] [--max-minutes M]          # base / prompts / separate / baselines
    lpm eval --model CKPT [--classical jpeg webp ...]           # RD JSON + per-image CSV, BD-rate vs VTM

Errors on bad input (unreadable images, truncated or foreign streams, another checkpoint's stream, wrong
checkpoints, an unreachable ``--target-bpp``, an animated or multi-page image, a directory, FIFO or device
where a file is expected, a folder that cannot be written, a full disk, a name too long) print one line
``lpm: error: ...`` naming the user's path and exit with status 2; nothing is written in that case, and no
temporary file is left behind (also on Ctrl-C, exit 130, SIGTERM, exit 143, and SIGHUP, exit 129). Warnings print as one
line ``lpm: warning: ...``.

Outputs, as with gzip/zstd (:mod:`lpm.fsutil`): a file appears atomically (temporary file in the same
folder, then rename). An output that is the same file as the input (also through a symbolic or hard link)
is refused, always. An existing output is refused unless ``--force`` (compress, decompress, roundtrip
``--json``); with ``--force`` a symbolic link is replaced itself (never written through), and a directory,
FIFO, device or socket is refused anyway. ``lpm info``/``decompress`` read regular files only (a FIFO or
device is refused at once, never read). ``lpm eval --out-dir`` is a results folder that runs resume into
and rewrite.

Devices (``--device``): compress, decompress and roundtrip run on the CPU unless told ``cuda``; eval uses a
CUDA GPU when one is usable (``auto``). A file decodes the same way whichever device encoded it: the entropy
tables are derived from float64 CPU copies of the hyper-synthesis at both ends, and ``.lpm`` version 2 stores
a check of them, so a decoder that would get them wrong refuses in one line instead of writing garbage.
Decoded pixels are bit-identical for any CPU thread count; across devices they may differ by 1 LSB.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence

__all__ = ["main"]

EXIT_ERROR = 2


def _set_threads(args: argparse.Namespace) -> None:
    """Torch's intra-op threads for this command (``--threads``, else :func:`lpm.limits.default_threads`)."""
    import torch

    from lpm.limits import default_threads

    n = args.threads if getattr(args, "threads", None) else default_threads()
    torch.set_num_threads(max(1, int(n)))


def _int_arg(lo: int, hi: Optional[int] = None) -> "Callable[[str], int]":
    """An argparse type: an integer in ``lo..hi`` (``hi`` None: no upper bound)."""
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if n < lo or (hi is not None and n > hi):
            span = f">= {lo}" if hi is None else f"in {lo}..{hi}"
            raise argparse.ArgumentTypeError(f"expected an integer {span}, got {n}")
        return n
    return parse


#: Most torch threads ``--threads`` takes (5000 ran a 65x33 image 2.3x slower, in 1.2 GB).
MAX_THREADS = 1024


def _shown(path: object) -> str:
    """A path as the user can read it on any terminal: undecodable bytes as ``\\xff``, control characters
    escaped (a name that is not UTF-8 made the success line fail after the file was written)."""
    from lpm.fsutil import printable

    return printable(os.fsdecode(os.fspath(path)) if isinstance(path, (str, bytes, os.PathLike)) else str(path))


def _rates_to_measure(model, rates: Sequence[float]) -> list[float]:
    """``rates`` in the order given, each λ once (a repeated one was measured and written twice), every one checked
    against the model's range before the first is measured (an outside one failed after minutes)."""
    out: list[float] = []
    for r in rates:
        getattr(model, "check_rate", float)(r)
        if not any(math.isclose(r, q, rel_tol=1e-9) for q in out):
            out.append(r)
    return out


def _device_arg(text: str) -> str:
    """``--device``: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (checked without importing torch)."""
    t = text.strip().lower()
    if t in ("cpu", "cuda", "auto") or (t.startswith("cuda:") and t[5:].isdigit()):
        return t
    raise argparse.ArgumentTypeError(f"expected cpu, cuda, cuda:N or auto, got {text!r}")


def _resolve_device(args: argparse.Namespace) -> str:
    """``args.device`` made concrete: ``auto`` is cuda when a CUDA GPU is usable, else cpu; a CUDA device
    that is not there is a clear error."""
    import torch

    d = getattr(args, "device", None) or "cpu"
    if d == "auto":
        d = "cuda" if torch.cuda.is_available() else "cpu"
    if d.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {d}: no CUDA GPU is usable here (torch {torch.__version__}); use --device cpu")
        index = int(d[5:]) if ":" in d else 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"--device {d}: only {torch.cuda.device_count()} CUDA device(s) here")
    args.device = d
    return d


def _model(args: argparse.Namespace):
    """The checkpoint named by ``--model`` (default: ``zoo.DEFAULT_CHECKPOINT``) as a :class:`LoadedCodec`."""
    from lpm import zoo

    _set_threads(args)
    _resolve_device(args)
    if not args.model:
        if zoo.DEFAULT_CHECKPOINT not in zoo.CHECKPOINTS:
            raise ValueError("no --model given and no trained checkpoint is shipped yet; pass a checkpoint file")
        args.model = zoo.DEFAULT_CHECKPOINT
    return zoo.load(args.model, device=args.device)


class _TileProgress:
    """``progress(done, total)`` for :mod:`lpm.codec`: a tqdm bar on stderr over the tiles of an image coded in
    more than one tile (nothing for an image coded whole, nor with ``--no-progress``). A new run of tiles
    (``done == 1``, e.g. the next encoding of a ``--target-bpp`` search) starts a new bar."""

    def __init__(self, desc: str, enabled: bool) -> None:
        self.desc, self.enabled, self.bar = desc, enabled, None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total <= 1:
            return
        if self.bar is None or done == 1 or self.bar.total != total:
            from tqdm import tqdm

            self.close()
            self.bar = tqdm(total=total, desc=self.desc, unit="tile", file=sys.stderr, leave=False)
        self.bar.update(done - self.bar.n)
        if done >= total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _cmd_compress(args: argparse.Namespace) -> int:
    from lpm.codec import compress_file

    ckpt = _model(args)
    bar = _TileProgress("encoding tiles", not args.no_progress)
    try:
        res = compress_file(
            ckpt.model, ckpt.model_id, args.input, args.output, rate=args.rate, target_bpp=args.target_bpp,
            max_pixels=args.max_pixels, force=args.force, progress=bar, keep=(ckpt.path,),
        )
    finally:
        bar.close()
    print(f"{_shown(args.output)}: {res.height}x{res.width} (HxW), rate λ={res.rate:.5g}, {res.num_bytes} bytes, "
          f"{res.bpp:.4f} bpp")
    return 0


def _shipped_checkpoint_of(path: str) -> Optional[str]:
    """The zoo name of the shipped checkpoint whose id a ``.lpm`` file's header names, or None (the file is
    unreadable, foreign, or from a checkpoint that is not shipped: decoding then reports why)."""
    from lpm import fileformat, zoo

    try:
        mid = fileformat.read(path).header.model_id
    except (OSError, ValueError):
        return None
    return next((n for n, e in zoo.CHECKPOINTS.items() if fileformat.model_id_from_sha256(e.sha256) == mid), None)


def _cmd_decompress(args: argparse.Namespace) -> int:
    from lpm.codec import decompress_file

    if not args.model:  # the header names its checkpoint: take that one when it is shipped
        args.model = _shipped_checkpoint_of(args.input)
    ckpt = _model(args)
    bar = _TileProgress("decoding tiles", not args.no_progress)
    try:
        res = decompress_file(ckpt.model, ckpt.model_id, args.input, args.output, max_pixels=args.max_pixels,
                              force=args.force, progress=bar, keep=(ckpt.path,))
    finally:
        bar.close()
    print(f"{_shown(args.output)}: {res.height}x{res.width} (HxW) decoded from {res.num_bytes} bytes "
          f"({res.bpp:.4f} bpp)")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from lpm import fileformat

    print(fileformat.describe(fileformat.read(args.input)))
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from lpm import zoo

    for name, cfg in zoo.CONFIGS.items():
        print(f"config {name}: {json.dumps(cfg['codec'])}")
    if not zoo.CHECKPOINTS:
        print("checkpoints: none shipped yet")
    for name, e in zoo.CHECKPOINTS.items():
        default = " (default)" if name == zoo.DEFAULT_CHECKPOINT else ""
        print(f"checkpoint {name}{default}: {e.file} sha256={e.sha256[:16]}… config={e.config} budget: {e.budget}")
    return 0


def _cmd_roundtrip(args: argparse.Namespace) -> int:
    """Real bpp/PSNR per rate through the evaluation code (:func:`lpm.eval.evaluate_codec`), one row per rate."""
    from lpm.data import find_images, locate_dataset
    from lpm.eval import evaluate_codec

    ckpt = _model(args)
    model = ckpt.model
    folder = Path(args.images) if args.images else locate_dataset("kodak", args.data_dir)
    paths = find_images(folder)[: args.limit or None]
    rates = _rates_to_measure(model, args.rates or model.rates)
    if args.json:  # before the long run: never overwrite an image or, without --force, an existing file
        from lpm.fsutil import check_output

        json_folder = Path(args.json).parent
        for p in (json_folder, *json_folder.parents):  # the nearest existing one must be a folder (made later)
            if p.exists():
                if not p.is_dir():
                    raise ValueError(f"--json {_shown(args.json)}: {_shown(p)} is not a folder")
                break
        if json_folder.is_dir():
            check_output(args.json, force=args.force, inputs=[*paths, ckpt.path])
    print(f"checkpoint {_shown(ckpt.path)} (sha256 {ckpt.sha256[:16]}…; {ckpt.budget_label()})")
    files = f"{len(paths)} file" + ("s" if len(paths) != 1 else "")
    print(f"images: {_shown(folder)} ({files}); rates λ: {', '.join(f'{r:g}' for r in rates)}")
    header = f"{'rate λ':>9s} {'bpp':>8s} {'PSNR dB':>8s} {'enc s':>7s} {'dec s':>7s}"
    print(header, flush=True)
    merged: Optional[dict] = None
    for rate in rates:
        res = evaluate_codec(ckpt, paths, [rate], device=args.device,
                             progress=not args.no_progress, max_pixels=args.max_pixels)
        r = res["results"]
        print(f"{rate:9.5g} {r['bpp'][0]:8.4f} {r['psnr-rgb'][0]:8.3f} {r['encoding_time'][0]:7.2f} "
              f"{r['decoding_time'][0]:7.2f}", flush=True)
        if merged is None:
            merged = res
        else:
            for k, v in r.items():
                merged["results"][k] += v
    if args.json and merged is not None:
        from lpm.fsutil import atomic_write
        from lpm.jsonio import strict_json

        merged["name"] = f"lpm ({ckpt.path.name})"
        merged["meta"]["images"] = str(folder)
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(args.json, (json.dumps(strict_json(merged), indent=2, allow_nan=False) + "\n").encode(),
                     overwrite=args.force)
        print(f"wrote {_shown(args.json)}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    import math as _m

    from lpm.data import find_images, kodak_identity, locate_dataset
    from lpm.eval import bd_rate, evaluate_classical, evaluate_codec, load_anchors, save_results_json

    folder = Path(args.images) if args.images else locate_dataset("kodak", args.data_dir)
    # images are Kodak only if they are the manifest's 24 files (the data directory's kodak/, or --images)
    identity, manifest, mismatch = kodak_identity(find_images(folder))
    dataset_name = identity if manifest is not None or not args.images else str(folder)
    if mismatch and not args.images:
        print(f"lpm: warning: {_shown(mismatch)} — numbers are NOT comparable to Kodak results or to the "
              "published anchors", file=sys.stderr)
    out_dir = Path(args.out_dir)
    vtm = load_anchors("VTM")

    def bd_line(name: str, res: dict) -> None:
        if manifest is None:  # the anchors are means over the 24 Kodak images: another set's are not comparable
            print(f"{name}: BD-rate vs VTM not shown (the published anchors are Kodak's; these images are not "
                  "the Kodak set)")
            return
        try:
            bd = bd_rate(vtm["bpp"], vtm["psnr_rgb"], res["results"]["bpp"], res["results"]["psnr-rgb"])
            print(f"{name}: BD-rate vs VTM (Kodak anchors, cubic) {bd:+.2f} %")
        except ValueError as e:
            print(f"{name}: BD-rate vs VTM not computable ({e})")

    if not args.classical_only:
        ckpt = _model(args)
        model = ckpt.model
        rates = list(args.rates or model.rates)
        if args.continuous:
            lo, hi = _m.log(model.rate_range[0]), _m.log(model.rate_range[1])
            rates += [_m.exp(lo + (hi - lo) * (i + 0.5) / args.continuous) for i in range(args.continuous)]
        rates = sorted(_rates_to_measure(model, rates))
        name = args.name or ckpt.path.stem
        res = evaluate_codec(
            ckpt, folder, rates, out_dir=out_dir, name=name,
            dataset_name=dataset_name, manifest=manifest,
            device=args.device, progress=not args.no_progress, max_pixels=args.max_pixels,
        )
        r = res["results"]
        print(f"{name} ({ckpt.budget_label()})")
        print(f"{'rate λ':>9s} {'bpp':>8s} {'PSNR':>8s} {'MS-SSIM':>8s}")
        for i in range(len(r["bpp"])):
            ms = r["ms-ssim-rgb"][i]
            print(f"{r['rate'][i]:9.5g} {r['bpp'][i]:8.4f} {r['psnr-rgb'][i]:8.3f} "
                  f"{'n/a' if ms is None or ms != ms else f'{ms:.4f}':>8s}")
        print(f"wrote {out_dir / (name + '.json')}")
        bd_line(name, res)
    for codec in args.classical or []:
        res = evaluate_classical(codec, folder, progress=not args.no_progress, max_pixels=args.max_pixels)
        path = save_results_json(res, out_dir / f"classical-{codec}.json")
        print(f"wrote {path}")
        bd_line(codec, res)
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from lpm.notebooks import NotebookFailed, find_notebooks, run_all

    params = {"SMOKE": args.smoke, "RECOMPUTE": args.recompute}
    if args.data_dir:
        params["DATA_DIR"] = str(Path(args.data_dir).resolve())
    if args.results_dir:
        params["RESULTS_DIR"] = str(Path(args.results_dir).resolve())
    if args.checkpoints:
        params["CHECKPOINTS"] = [str(Path(c).resolve()) if Path(c).exists() else c for c in args.checkpoints]
    from lpm.notebooks import NOTEBOOK_DIR

    notebooks = find_notebooks(Path(args.notebooks_dir) if args.notebooks_dir else NOTEBOOK_DIR, only=args.only)
    t0 = time.perf_counter()
    try:
        done = run_all(params, notebooks=notebooks, timeout=args.cell_timeout, log=lambda m: print(m, flush=True))
    except NotebookFailed as e:
        print(f"lpm: error: {e}", file=sys.stderr)
        return 1
    where = params.get("RESULTS_DIR") or ("results/cache/smoke/" if args.smoke else
                                          "results/ (Kodak) or results/cache/<images>/ (other images)")
    shown = done[0].parent if done else None
    if shown is not None:
        try:
            shown = shown.relative_to(Path.cwd())
        except ValueError:
            pass
    print(f"all {len(done)} notebooks ran in {time.perf_counter() - t0:.0f} s; figures, tables and records are in "
          f"{where}; executed notebooks in {shown}/")
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    import subprocess

    from lpm.data import MANIFEST_DIR

    script = MANIFEST_DIR / "download.py"
    if not script.exists():
        raise FileNotFoundError(f"{script} is missing (it ships with the repository checkout)")
    cmd = [sys.executable, str(script), args.set] + (["--dest", args.dest] if args.dest else [])
    cmd += ["--from-dir", args.from_dir] if args.from_dir else []
    return subprocess.call(cmd)


def _cmd_train(args: argparse.Namespace) -> int:
    from lpm.train.runner import Runner, load_config

    cfg = load_config(args.config, max_minutes=args.max_minutes, out_dir=args.out_dir,
                      continue_from=args.continue_from)
    runner = Runner(cfg, data_dir=args.data_dir, device=args.device, progress=not args.no_progress)
    written = runner.run(resume=args.resume)
    if runner.rank == 0:
        for p in written:
            print(f"wrote {p}")
        print(runner.budget_string())
    return 0


def _parser() -> argparse.ArgumentParser:
    from lpm import __version__
    from lpm.limits import default_max_pixels

    max_pixels = default_max_pixels()

    ap = argparse.ArgumentParser(prog="lpm", description="Variable-rate learned image compression with prompt modules.")
    ap.add_argument("--version", action="version", version=f"lpm {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    def model_args(p: argparse.ArgumentParser, device: str = "cpu") -> None:
        p.add_argument("--model", help="zoo checkpoint name or a checkpoint file (.safetensors); default: the "
                       "paper's method, zoo.DEFAULT_CHECKPOINT (`lpm models` marks it)")
        p.add_argument("--device", default=device, type=_device_arg, metavar="{cpu,cuda,cuda:N,auto}",
                       help=f"where the transforms run (default: {device}{'; auto = cuda if present' if device == 'auto' else ''}). "
                            "Files are the same on any device: the entropy tables are always derived on the CPU "
                            "in float64")
        p.add_argument("--max-pixels", type=_int_arg(1), default=max_pixels,
                       help=f"refuse larger images (default here: {max_pixels}, from the memory available now "
                            "and the measured ~3 GB + 150 bytes per pixel; images above 1024 pixels a side are "
                            "coded in tiles, the same way on every machine)")
        p.add_argument("--threads", type=_int_arg(1, MAX_THREADS), default=None,
                       help="CPU threads for torch, 1..1024 (default: free CPUs, i.e. CPUs minus the current load; "
                            "or $LPM_THREADS / $OMP_NUM_THREADS)")

    force_help = (
        "replace an existing output (a symbolic link is replaced, not followed; never the input itself, "
        "a directory, FIFO or device)"
    )
    p = sub.add_parser(
        "compress", help="image -> .lpm file",
        description="Code one image (PNG, JPEG, TIFF, ...; not animated or multi-page) into a .lpm file. "
        "The output never replaces the input, nor an existing file without --force; it appears atomically.",
    )
    p.add_argument("input")
    p.add_argument("output")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--rate", type=float, help="λ in the model's range (default: the base rate)")
    g.add_argument(
        "--target-bpp", type=float,
        help="the rate whose file comes closest under this many bits per pixel (at most 1 %% under where the "
        "search gets there; the largest rate that fits, where the size rises with λ; a warning where it does not); "
        "an error, exit 2, if no rate fits (the lowest, the highest, the trained ones), naming the lowest's bpp",
    )
    p.add_argument("-f", "--force", action="store_true", help=force_help)
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (shown on stderr for images coded in tiles, i.e. above 1024 pixels a side)")
    model_args(p)
    p.set_defaults(func=_cmd_compress)

    p = sub.add_parser(
        "decompress", help=".lpm file -> PNG",
        description="Decode a .lpm file (a regular file) to a PNG. The output never replaces the input, nor "
        "an existing file without --force; it appears atomically. Without --model, the shipped checkpoint "
        "whose id the file's header names is used (else the default one, which then refuses a foreign file).",
    )
    p.add_argument("input")
    p.add_argument("output", help="the PNG to write (*.png)")
    p.add_argument("-f", "--force", action="store_true", help=force_help)
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (shown on stderr for images decoded in tiles, i.e. above 1024 pixels a side)")
    model_args(p)
    p.set_defaults(func=_cmd_decompress)

    p = sub.add_parser("info", help="describe a .lpm file")
    p.add_argument("input")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("models", help="list named configs and shipped checkpoints")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("train", help="run a training config (base, prompts, lora, separate, rate_conditioned, gain_units); resumable")
    p.add_argument("config", help="YAML run config (see configs/)")
    p.add_argument("--resume", action="store_true", help="continue the run in its out_dir")
    p.add_argument("--max-minutes", type=float, help="stop cleanly (and save) after this much training time")
    p.add_argument("--data-dir", help="directory holding the training set's folder")
    p.add_argument("--out-dir", help="override the config's out_dir")
    p.add_argument("--continue-from", metavar="PARTIAL",
                   help="start this run where partial.safetensors of an earlier stop left it, in a fresh out_dir "
                        "(weights only: fresh optimizer, learning-rate warm-up; the ledger records it)")
    p.add_argument("--device", help="torch device (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="real-bitstream RD evaluation (JSON + per-image CSV), classical codecs, BD-rate")
    p.add_argument("--data-dir", help="directory holding kodak/ (default: $LPM_DATA_DIR or the project's data/)")
    p.add_argument("--images", help="a directory of images instead of Kodak")
    p.add_argument("--rates", type=float, nargs="+", help="λ values (default: the model's trained rates)")
    p.add_argument("--continuous", type=_int_arg(0, 1000), default=0,
                   help="also K log-spaced rates across the range (0..1000)")
    p.add_argument("--classical", nargs="+", metavar="CODEC", help="also measure classical codecs (jpeg webp avif jpegxl jpeg2000)")
    p.add_argument("--classical-only", action="store_true", help="skip the learned codec")
    p.add_argument("--out-dir", default="results/eval",
                   help="where JSON/CSV go; resumes from the CSV (default: results/eval under the current directory; "
                   "the notebooks' own cache is the project's results/eval, with other file names)")
    p.add_argument("--name", help="results name (default: the checkpoint's file name)")
    p.add_argument("--no-progress", action="store_true")
    model_args(p, device="auto")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("reproduce", help="run every notebook with papermill into results/notebooks/ (the main job)")
    p.add_argument("--data-dir", help="directory holding kodak/ (else data/, else bundled sample photographs)")
    p.add_argument("--results-dir", help="where figures/tables/records go (default: results/)")
    p.add_argument("--checkpoints", nargs="+", help="zoo names or files (default: each notebook's own)")
    p.add_argument("--only", nargs="+", help="run only these notebooks (names without .ipynb)")
    p.add_argument("--notebooks-dir", help=argparse.SUPPRESS)
    p.add_argument("--smoke", action="store_true", help="tiny data and sweeps (a quick check)")
    p.add_argument("--recompute", action="store_true", help="re-evaluate instead of using cached results")
    p.add_argument("--cell-timeout", type=_int_arg(1), default=None, help="seconds per cell (default: none)")
    p.set_defaults(func=_cmd_reproduce)

    p = sub.add_parser("data", help="download an image set and check it against its sha256 manifest")
    dsub = p.add_subparsers(dest="action", required=True)
    d = dsub.add_parser("download", help="kodak (from r0k.us) or bsds500 (the Berkeley tarball)")
    d.add_argument("set", choices=["kodak", "bsds500"])
    d.add_argument("--dest", help="directory to put <set>/ in (default: the project's data/)")
    d.add_argument("--from-dir", help="copy and check a local copy instead of downloading")
    p.set_defaults(func=_cmd_data)

    p = sub.add_parser("roundtrip", help="real-bitstream bpp and PSNR of an image set at each rate")
    p.add_argument("--data-dir", help="directory holding kodak/ (default: $LPM_DATA_DIR or the project's data/)")
    p.add_argument("--images", help="a directory of images instead of Kodak")
    p.add_argument("--limit", type=_int_arg(0), default=0, help="use only the first N images (0: all)")
    p.add_argument("--rates", type=float, nargs="+", help="λ values (default: the model's trained rates)")
    p.add_argument("--json", help="write compressai-style results JSON here (an existing file only with --force)")
    p.add_argument("-f", "--force", action="store_true", help="replace an existing --json file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    model_args(p)
    p.set_defaults(func=_cmd_roundtrip)
    return ap


class _Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (a closed terminal), raised in the main thread like Ctrl-C so that cleanup runs
    (temporary files are removed); ``signum`` the signal (exit status 128 + it)."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__()
        self.signum = signum


def _on_sigterm(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    raise _Terminated(signum)


#: Signals the CLI turns into an interrupt (SIGHUP where the platform has it; one that is ignored, as under
#: ``nohup``, stays ignored).
_TERM_SIGNALS = tuple(s for s in (signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)


def _format_warning(message, category, filename, lineno, line=None) -> str:  # noqa: ARG001
    """Warnings as one line ``lpm: warning: ...``, without the source file and line of lpm's code."""
    return "lpm: warning: " + _shown(" ".join(str(message).split())) + "\n"


def _os_error_message(e: OSError) -> str:
    """``<path>: <reason>`` for errors of the file system (the path the user gave), else the message."""
    if e.filename is not None and e.strerror:
        name = e.filename if isinstance(e.filename, (str, bytes, os.PathLike)) else str(e.filename)
        return f"{os.fsdecode(name)}: {e.strerror}"
    return str(e)


def _out_of_memory(e: BaseException) -> bool:
    """A failed allocation: ``MemoryError``, or torch's, which is a ``RuntimeError`` (its CPU allocator's
    "can't allocate memory", or ``torch.OutOfMemoryError`` on a GPU); told apart without importing torch."""
    if isinstance(e, MemoryError) or any(t.__name__ == "OutOfMemoryError" for t in type(e).__mro__):
        return True
    text = str(e)
    return "can't allocate memory" in text or "out of memory" in text.lower()


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    # every lpm error (BitstreamError, ImageReadError, ModelMismatchError, CheckpointError, OutputRefused,
    # TrainingStateError, ...) is a ValueError or an OSError: no torch import is needed to catch them here

    in_main_thread = threading.current_thread() is threading.main_thread()
    old_handlers = {}
    if in_main_thread:
        for sig in _TERM_SIGNALS:
            if signal.getsignal(sig) != signal.SIG_IGN:
                old_handlers[sig] = signal.signal(sig, _on_sigterm)
    old_format, warnings.formatwarning = warnings.formatwarning, _format_warning
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            # lpm's own warnings (dropped alpha, a format 1 stream, ...) are printed every time, also when the
            # same code warned before in this process (the default shows one per code location)
            warnings.filterwarnings("always", category=UserWarning, module=r"lpm(\.|$)")
            return int(args.func(args) or 0)
    except OSError as e:  # directory, permission, full disk, name too long, ...: one line naming the path
        print(f"lpm: error: {_shown(' '.join(_os_error_message(e).split()))}", file=sys.stderr)
        return EXIT_ERROR
    except (KeyError, ValueError) as e:
        msg = " ".join(str(e.args[0] if isinstance(e, KeyError) and e.args else e).split())
        print(f"lpm: error: {_shown(msg)}", file=sys.stderr)
        return EXIT_ERROR
    except (MemoryError, RuntimeError) as e:  # one line, not a traceback; what was being written is left untouched
        if not _out_of_memory(e):
            raise
        print("lpm: error: out of memory: try a smaller image, --max-pixels, or a machine with more memory",
              file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt as e:
        print("lpm: interrupted", file=sys.stderr)
        return 128 + e.signum if isinstance(e, _Terminated) else 130
    finally:
        warnings.formatwarning = old_format
        for sig, old in old_handlers.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
