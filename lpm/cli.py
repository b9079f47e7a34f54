"""The ``lpm`` command: ``main(argv) -> int``.

    lpm compress IN.png OUT.lpm --model CKPT [--rate λ | --target-bpp B]
    lpm decompress IN.lpm OUT.png --model CKPT
    lpm info FILE.lpm
    lpm roundtrip --model CKPT [--data-dir DIR] [--rates λ ...]   # real bpp and PSNR of an image set
    lpm models                                                  # the name table
    lpm reproduce [--data-dir DIR] [--smoke]                    # every notebook via papermill (main job)
    lpm data download kodak [--dest DIR]                        # images + sha256 check
    lpm train CONFIG.yaml [--resume] [--max-minutes M]          # base / prompts / separate / baselines
    lpm eval --model CKPT [--classical jpeg webp ...]           # RD JSON + per-image CSV, BD-rate vs VTM

Errors on bad input (unreadable images, truncated or foreign streams, another checkpoint's stream, wrong
checkpoints) print one line ``lpm: error: ...`` and exit with status 2; nothing is written in that case.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Optional, Sequence

__all__ = ["main"]

EXIT_ERROR = 2


def _model(args: argparse.Namespace):
    from lpm import fileformat, zoo

    if not args.model:
        names = sorted(zoo.CHECKPOINTS)
        if not names:
            raise ValueError("no --model given and no trained checkpoint is shipped yet; pass a checkpoint file")
        args.model = names[0]
    model, info = zoo.load(args.model, device=args.device)
    return model, fileformat.model_id_from_sha256(info["sha256"]), info


def _cmd_compress(args: argparse.Namespace) -> int:
    from lpm.codec import compress_file

    model, model_id, _ = _model(args)
    res = compress_file(
        model, model_id, args.input, args.output, rate=args.rate, target_bpp=args.target_bpp, max_pixels=args.max_pixels
    )
    print(f"{args.output}: {res.height}x{res.width}, rate λ={res.rate:.5g}, {res.num_bytes} bytes, {res.bpp:.4f} bpp")
    return 0


def _cmd_decompress(args: argparse.Namespace) -> int:
    from lpm.codec import decompress_file

    model, model_id, _ = _model(args)
    res = decompress_file(model, model_id, args.input, args.output, max_pixels=args.max_pixels)
    print(f"{args.output}: {res.height}x{res.width} decoded from {res.num_bytes} bytes ({res.bpp:.4f} bpp)")
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
        print(f"checkpoint {name}: {e.file} sha256={e.sha256[:16]}… config={e.config} budget: {e.budget}")
    return 0


def _cmd_roundtrip(args: argparse.Namespace) -> int:
    import torch

    from lpm import fileformat
    from lpm.codec import decode_image, encode_image
    from lpm.data import find_images, locate_dataset, read_image

    model, model_id, info = _model(args)
    folder = Path(args.images) if args.images else locate_dataset("kodak", args.data_dir)
    paths = find_images(folder)[: args.limit or None]
    rates = args.rates or model.rates
    budget = info["meta"].get("budget", "unknown training budget")
    print(f"checkpoint {info['path']} (sha256 {info['sha256'][:16]}…; {budget})")
    print(f"images: {folder} ({len(paths)} files); rates λ: {', '.join(f'{r:g}' for r in rates)}")
    print(f"{'rate λ':>9s} {'bpp':>8s} {'PSNR dB':>8s} {'enc s':>7s} {'dec s':>7s}")
    rows = []
    for rate in rates:
        bpps, psnrs, t_enc, t_dec = [], [], 0.0, 0.0
        for p in paths:
            x, im = read_image(p, max_pixels=args.max_pixels)
            t0 = time.perf_counter()
            data = fileformat.encode(encode_image(model, model_id, x, im, rate))
            t1 = time.perf_counter()
            x_hat, _ = decode_image(model, model_id, fileformat.decode(data))
            t2 = time.perf_counter()
            t_enc, t_dec = t_enc + t1 - t0, t_dec + t2 - t1
            ref = torch.round(x.clamp(0, 1) * 255)
            mse = torch.mean((torch.round(x_hat * 255) - ref) ** 2).item()
            bpps.append(8 * len(data) / (im.height * im.width))
            psnrs.append(10 * math.log10(255**2 / max(mse, 1e-10)))
        row = {
            "rate": rate,
            "bpp": sum(bpps) / len(bpps),
            "psnr-rgb": sum(psnrs) / len(psnrs),
            "encoding_time": t_enc / len(paths),
            "decoding_time": t_dec / len(paths),
        }
        rows.append(row)
        print(f"{rate:9.5g} {row['bpp']:8.4f} {row['psnr-rgb']:8.3f} {row['encoding_time']:7.2f} {row['decoding_time']:7.2f}")
    if args.json:
        from lpm.provenance import environment

        out = {
            "name": f"lpm ({Path(info['path']).name})",
            "description": f"real-bitstream round trip; {budget}",
            "results": {k: [r[k] for r in rows] for k in rows[0]},
            "meta": {**environment(args.device), "checkpoint_sha256": info["sha256"], "images": str(folder)},
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    import math as _m

    from lpm.data import KNOWN_SETS, locate_dataset, manifest_path
    from lpm.eval import bd_rate, evaluate_classical, evaluate_codec, load_anchors, save_results_json

    folder = Path(args.images) if args.images else locate_dataset("kodak", args.data_dir)
    is_kodak = not args.images
    out_dir = Path(args.out_dir)
    vtm = load_anchors("VTM")

    def bd_line(name: str, res: dict) -> None:
        try:
            bd = bd_rate(vtm["bpp"], vtm["psnr_rgb"], res["results"]["bpp"], res["results"]["psnr-rgb"])
            print(f"{name}: BD-rate vs VTM (Kodak anchors, cubic) {bd:+.2f} %")
        except ValueError as e:
            print(f"{name}: BD-rate vs VTM not computable ({e})")

    if not args.classical_only:
        model, _, info = _model(args)
        rates = list(args.rates or model.rates)
        if args.continuous:
            lo, hi = _m.log(model.rate_range[0]), _m.log(model.rate_range[1])
            rates += [_m.exp(lo + (hi - lo) * (i + 0.5) / args.continuous) for i in range(args.continuous)]
        rates = sorted(set(rates))
        name = args.name or Path(info["path"]).stem
        res = evaluate_codec(
            model, folder, rates, checkpoint_info=info, out_dir=out_dir, name=name,
            dataset_name="kodak" if is_kodak else str(folder),
            manifest=manifest_path("kodak") if is_kodak and "kodak" in KNOWN_SETS else None,
            device=args.device, progress=not args.no_progress,
        )
        r = res["results"]
        print(f"{name} ({info['meta'].get('budget', 'unknown budget')})")
        print(f"{'rate λ':>9s} {'bpp':>8s} {'PSNR':>8s} {'MS-SSIM':>8s}")
        for i in range(len(r["bpp"])):
            ms = r["ms-ssim-rgb"][i]
            print(f"{r['rate'][i]:9.5g} {r['bpp'][i]:8.4f} {r['psnr-rgb'][i]:8.3f} "
                  f"{'n/a' if ms is None or ms != ms else f'{ms:.4f}':>8s}")
        print(f"wrote {out_dir / (name + '.json')}")
        bd_line(name, res)
    for codec in args.classical or []:
        res = evaluate_classical(codec, folder, progress=not args.no_progress)
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
        done = run_all(params, notebooks=notebooks, timeout=args.cell_timeout)
    except NotebookFailed as e:
        print(f"lpm: error: {e}", file=sys.stderr)
        return 1
    print(f"all {len(done)} notebooks ran in {time.perf_counter() - t0:.0f} s; figures, tables and records are in "
          f"{params.get('RESULTS_DIR', 'results/')}")
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

    cfg = load_config(args.config, max_minutes=args.max_minutes, out_dir=args.out_dir)
    runner = Runner(cfg, data_dir=args.data_dir, device=args.device, progress=not args.no_progress)
    written = runner.run(resume=args.resume)
    if runner.rank == 0:
        for p in written:
            print(f"wrote {p}")
        print(runner.budget_string())
    return 0


def _parser() -> argparse.ArgumentParser:
    from lpm import __version__
    from lpm.codec import DEFAULT_MAX_PIXELS

    ap = argparse.ArgumentParser(prog="lpm", description="Variable-rate learned image compression with prompt modules.")
    ap.add_argument("--version", action="version", version=f"lpm {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    def model_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", help="zoo checkpoint name or a checkpoint file (.safetensors)")
        p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
        p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="refuse larger images")

    p = sub.add_parser("compress", help="image -> .lpm file")
    p.add_argument("input")
    p.add_argument("output")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--rate", type=float, help="λ in the model's range (default: the base rate)")
    g.add_argument("--target-bpp", type=float, help="largest rate whose file fits this many bits per pixel")
    model_args(p)
    p.set_defaults(func=_cmd_compress)

    p = sub.add_parser("decompress", help=".lpm file -> PNG")
    p.add_argument("input")
    p.add_argument("output")
    model_args(p)
    p.set_defaults(func=_cmd_decompress)

    p = sub.add_parser("info", help="describe a .lpm file")
    p.add_argument("input")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("models", help="list named configs and shipped checkpoints")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("train", help="run a training config (base, prompts, separate); resumable")
    p.add_argument("config", help="YAML run config (see configs/)")
    p.add_argument("--resume", action="store_true", help="continue the run in its out_dir")
    p.add_argument("--max-minutes", type=float, help="stop cleanly (and save) after this much training time")
    p.add_argument("--data-dir", help="directory holding the training set's folder")
    p.add_argument("--out-dir", help="override the config's out_dir")
    p.add_argument("--device", help="torch device (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="real-bitstream RD evaluation (JSON + per-image CSV), classical codecs, BD-rate")
    p.add_argument("--data-dir", help="directory holding kodak/ (default: $LPM_DATA_DIR or the project's data/)")
    p.add_argument("--images", help="a directory of images instead of Kodak")
    p.add_argument("--rates", type=float, nargs="+", help="λ values (default: the model's trained rates)")
    p.add_argument("--continuous", type=int, default=0, help="also K log-spaced rates across the range")
    p.add_argument("--classical", nargs="+", metavar="CODEC", help="also measure classical codecs (jpeg webp avif jpegxl jpeg2000)")
    p.add_argument("--classical-only", action="store_true", help="skip the learned codec")
    p.add_argument("--out-dir", default="results/eval", help="where JSON/CSV go (resumes from the CSV)")
    p.add_argument("--name", help="results name (default: the checkpoint's file name)")
    p.add_argument("--no-progress", action="store_true")
    model_args(p)
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("reproduce", help="run every notebook with papermill into results/notebooks/ (the main job)")
    p.add_argument("--data-dir", help="directory holding kodak/ (else data/, else bundled sample photographs)")
    p.add_argument("--results-dir", help="where figures/tables/records go (default: results/)")
    p.add_argument("--checkpoints", nargs="+", help="zoo names or files (default: each notebook's own)")
    p.add_argument("--only", nargs="+", help="run only these notebooks (names without .ipynb)")
    p.add_argument("--notebooks-dir", help=argparse.SUPPRESS)
    p.add_argument("--smoke", action="store_true", help="tiny data and sweeps (a quick check)")
    p.add_argument("--recompute", action="store_true", help="re-evaluate instead of using cached results")
    p.add_argument("--cell-timeout", type=int, default=None, help="seconds per cell (default: none)")
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
    p.add_argument("--limit", type=int, default=0, help="use only the first N images")
    p.add_argument("--rates", type=float, nargs="+", help="λ values (default: the model's trained rates)")
    p.add_argument("--json", help="write compressai-style results JSON here")
    model_args(p)
    p.set_defaults(func=_cmd_roundtrip)
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    from lpm.codec import ModelMismatchError
    from lpm.data import ImageReadError
    from lpm.fileformat import BitstreamError
    from lpm.train.checkpoint import CheckpointError

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            return int(args.func(args) or 0)
    except (BitstreamError, ImageReadError, ModelMismatchError, CheckpointError, FileNotFoundError, KeyError, ValueError) as e:
        msg = " ".join(str(e.args[0] if isinstance(e, KeyError) and e.args else e).split())
        print(f"lpm: error: {msg}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("lpm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
