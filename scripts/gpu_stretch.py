"""One stretch of GPU work in one command: what a lent GPU machine that keeps nothing should run (issue 9).

A lent GPU comes for minutes at a time (one command of at most 10 minutes, a session's lease of about 15,
start-up and transfers included), its files vanish 30 s after the command, and at most 8 files of 16 MiB
each come back. This script spends such a command well and brings back everything the next stretch needs:

1. ``--throughput``: ``bench/train_throughput.py`` (eager and channels-last, batch 16 and 32 at 256², short
   timed windows; ``--throughput-variants`` for others, e.g. ``compile``);
2. ``--cross-device DIR``: ``bench/cross_device.py`` on the images in DIR (GPU-encoded files decoded on the
   CPU and the reverse), in a background process on the CPU cores while the GPU trains;
3. ``--train CONFIG``: ``lpm train CONFIG --max-minutes M`` (``--continue-from PARTIAL`` to go on from a
   committed partial checkpoint), M chosen so that everything ends inside ``--minutes``;
4. ``--reach-images DIR``: ``bench/reach_probe.py`` (campaign step 3) on the weights the train step just
   produced (or ``--reach-init``), ``--reach-minutes`` of the stretch kept for it (the train step gets the
   rest): one prompt module one notch each side, prompts alone / with the gain / the all-weights control,
   ``--reach-steps`` each, evaluated on the first ``--reach-limit`` images of DIR with the transforms on the
   GPU; its JSON (written after every probe, so a cut run keeps what it finished) goes into stretch.json;
5. the harvest, into ``--out`` (the machine's ``$OUT``): the run's weights in half precision (the partial
   checkpoint after a stop, else each finished model re-saved with ``half=True``, and its float32 original
   where room is left), split into parts of at most ``--part-mib`` when larger, and one ``stretch.json`` with the environment, each step's exit status,
   duration and output tail, the throughput rows, the cross-device counts, the run's ledger, config and
   trimmed training log, and the sha256 of every weight file and part.

Every step runs in its own process with a deadline, and a failing step is recorded, not fatal: a broken
step does not waste the lease. On this machine afterwards::

    python scripts/gpu_stretch.py join FILES_AT --into results/runs/reduced-base

reassembles the parts, checks every sha256, and writes ``ledger.jsonl``, ``log.csv``, ``config.yaml`` and
``stretch.json`` beside the weights (float32 originals go to ``fp32/``, which git ignores). On the GPU machine (after the wheel install line of
``../shared/gpu/prepare``)::

    python3 scripts/gpu_stretch.py --out $OUT --data-dir .gpu_data --minutes 8.5 --throughput \\
        --cross-device .gpu_data/kodak --train configs/reduced-base.yaml

Nothing here imports imagecodecs (the GPU machine has none).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
#: What the harvest keeps of ``log.csv``: at most this many rows (evenly spaced, the last one always kept).
LOG_ROWS = 400
#: Tail of each step's output kept in stretch.json.
TAIL_CHARS = 4000
#: Minutes kept back from --minutes for the harvest (re-saving weights, hashing, splitting).
HARVEST_MIN = 0.5
#: Minutes a training process needs before its first step (imports, data onto the GPU, model build).
STARTUP_MIN = 0.75
#: Files that come back from the machine's $OUT (the device tool's limit).
MAX_FILES = 8
#: Seconds a step gets between SIGTERM at its deadline and SIGKILL: on SIGTERM the trainer saves its state and
#: partial checkpoint, so a run whose own clean stop came too late still brings back its weights.
TERM_GRACE_S = 10.0


def _run(cmd: list[str], log: Path, timeout_s: float, env: Optional[dict] = None) -> dict[str, Any]:
    """Run ``cmd`` with its output in ``log``; exit status, seconds and the output's tail. Past ``timeout_s``
    it gets SIGTERM, and SIGKILL :data:`TERM_GRACE_S` later if still running (its rc is then "timeout")."""
    t0 = time.time()
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        try:
            rc: Any = proc.wait(timeout=max(1.0, timeout_s))
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=TERM_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            rc = "timeout"
    text = log.read_text(errors="replace")
    return {"cmd": cmd[1:], "rc": rc, "seconds": round(time.time() - t0, 1), "tail": text[-TAIL_CHARS:]}


def _trim_log(path: Path) -> list[str]:
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    head, rows = lines[:1], lines[1:]
    if len(rows) > LOG_ROWS:
        step = len(rows) / (LOG_ROWS - 1)
        rows = [rows[int(i * step)] for i in range(LOG_ROWS - 1)] + [rows[-1]]
    return head + rows


def _split(path: Path, out: Path, part_bytes: int) -> list[dict[str, Any]]:
    """Copy ``path`` into ``out`` as one file or as ``NAME.part-K`` pieces of at most ``part_bytes``."""
    size = path.stat().st_size
    if size <= part_bytes:
        shutil.copyfile(path, out / path.name)
        from lpm.data import sha256_file

        return [{"file": path.name, "bytes": size, "sha256": sha256_file(out / path.name)}]
    parts = []
    with open(path, "rb") as f:
        k = 0
        while chunk := f.read(part_bytes):
            name = f"{path.name}.part-{k}"
            (out / name).write_bytes(chunk)
            parts.append({"file": name, "bytes": len(chunk), "sha256": hashlib.sha256(chunk).hexdigest()})
            k += 1
    return parts


def _harvest_weights(run_dir: Path, work: Path) -> tuple[list[Path], list[Path]]:
    """The run's weights to bring back: first (in half precision) the partial checkpoint if the run stopped,
    else every finished model re-saved with ``half=True`` (same metadata); then, where room is left, the
    finished models' float32 originals (so that ``bench/half_check.py`` can verify the half-precision copies
    on the full evaluation set at home)."""
    partial = run_dir / "partial.safetensors"
    if partial.exists():
        return [partial], []
    from lpm.checkpoints import load_codec, save_codec

    halves, originals = [], []
    for p in sorted(run_dir.glob("model*.safetensors")):
        ck = load_codec(p)
        half = work / (p.stem + "-fp16.safetensors")
        save_codec(half, ck.model, meta={**ck.meta, "base_rate": ck.base_rate, "saved_from_sha256": ck.sha256},
                   half=True)
        halves.append(half)
        originals.append(p)
    return halves, originals


def _reach(args: argparse.Namespace, run_dir: Path, work: Path, py: str, seconds: float,
           cuda: bool) -> tuple[dict, Any]:
    """The reach probe on ``--reach-init`` or on what the train step left in ``run_dir`` (its partial
    checkpoint after a stop, else its finished model): (step record, the probe's JSON or None). Without
    CUDA the evaluation runs on the CPU whatever ``--reach-eval-device`` says."""
    init = args.reach_init
    if not init:
        found = [p for p in (run_dir / "partial.safetensors", run_dir / "model.safetensors") if p.exists()]
        if not found:
            return {"skipped": "no base to probe: no --reach-init and the train step left no weights"}, None
        init = str(found[0])
    js = work / "reach_probe.json"
    cmd = [py, "bench/reach_probe.py", "--init", init, "--images", args.reach_images, "--limit", str(args.reach_limit),
           "--steps", str(args.reach_steps), "--batch", str(args.reach_batch), "--crop", str(args.reach_crop),
           "--variants", *args.reach_variants, "--model", args.reach_model, "--lora-rank", str(args.reach_lora_rank),
           "--eval-device", args.reach_eval_device if cuda else "cpu",
           "--out-dir", str(work / "reach-runs"), "--json", str(js)]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    if args.reach_rates:
        cmd += ["--rates", *map(str, args.reach_rates)]
    if args.reach_lora_targets:
        cmd += ["--lora-targets", *args.reach_lora_targets]
    for item in args.reach_prompt:
        cmd += ["--prompt", item]
    r = _run(cmd, work / "reach.log", seconds)
    r["init"] = init
    return r, json.loads(js.read_text()) if js.exists() else None


def stretch(args: argparse.Namespace) -> int:
    t_start = time.time()
    deadline = t_start + args.minutes * 60
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="lpm-stretch-"))
    py = sys.executable
    report: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "minutes": args.minutes,
                              "argv": sys.argv[1:], "steps": {}}
    try:
        import torch

        from lpm.provenance import environment

        dev = "cuda" if torch.cuda.is_available() else "cpu"
        report["environment"] = {**environment(dev), "platform": platform.platform(), "cpus": os.cpu_count()}
    except Exception as e:  # noqa: BLE001 -- recorded, the steps below say more
        report["environment"] = {"error": f"{type(e).__name__}: {e}"}
        dev = "cpu"

    def left() -> float:
        return deadline - time.time()

    background: Optional[tuple[subprocess.Popen, Path, Path, float]] = None
    if args.cross_device:
        if dev != "cuda":
            report["steps"]["cross_device"] = {"skipped": "no CUDA GPU here"}
        else:
            js, log = work / "cross_device.json", work / "cross_device.log"
            env = {**os.environ, "OMP_NUM_THREADS": str(args.cpu_threads)}
            cmd = [py, "bench/cross_device.py", "--images", args.cross_device, "--model", args.cross_model,
                   "--json", str(js)]
            background = (subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env, cwd=ROOT),
                          js, log, time.time())

    if args.throughput:
        rows = []
        for batch in args.throughput_batches:
            js = work / f"throughput-{batch}.json"
            r = _run([py, "bench/train_throughput.py", "--batch", str(batch), "--steps", str(args.throughput_steps),
                      "--config", args.throughput_config, "--variants", *args.throughput_variants, "--json", str(js)],
                     work / f"throughput-{batch}.log", min(args.throughput_timeout, left() - 60))
            if js.exists():
                data = json.loads(js.read_text())
                rows += [{**row, "batch": batch} for row in data["rows"]]
                r["meta"] = data["meta"]
            report["steps"][f"throughput-{batch}"] = r
        report["throughput"] = rows

    reach_minutes = args.reach_minutes if args.reach_images else 0.0
    run_dir = work / "run"
    if args.train:
        train_minutes = left() / 60 - HARVEST_MIN - STARTUP_MIN - reach_minutes
        cmd = [py, "-m", "lpm.cli", "train", args.train, "--out-dir", str(run_dir), "--no-progress",
               "--max-minutes", f"{max(0.1, train_minutes):.2f}"]
        if args.data_dir:
            cmd += ["--data-dir", args.data_dir]
        if args.continue_from:
            cmd += ["--continue-from", args.continue_from]
            try:  # join's cue that this harvest goes on from the partial checkpoint its --into folder holds
                from lpm.data import sha256_file

                report["continued_from_sha256"] = sha256_file(ROOT / args.continue_from)
            except OSError as e:
                report["continued_from_sha256"] = None
                report["continued_from_error"] = f"{type(e).__name__}: {e}"
        # SIGTERM only if the run overran its own clean stop by far (it saves at the next step after max_minutes);
        # the trainer then saves its partial checkpoint too (SIGKILL follows TERM_GRACE_S later)
        r = _run(cmd, work / "train.log", left() - HARVEST_MIN * 60 / 2 - reach_minutes * 60)
        r["max_minutes"] = round(train_minutes, 2)
        report["steps"]["train"] = r
        ledger = run_dir / "ledger.jsonl"
        report["ledger"] = [json.loads(line) for line in ledger.read_text().splitlines()] if ledger.exists() else []
        report["log_csv"] = _trim_log(run_dir / "log.csv")
        cfg = run_dir / "config.yaml"
        report["config_yaml"] = cfg.read_text() if cfg.exists() else None
        try:
            halves, originals = _harvest_weights(run_dir, work) if run_dir.exists() else ([], [])
            report["weights"], report["weights_left_behind"], room = {}, [], args.total_mib * 2**20
            part = int(args.part_mib * 2**20)
            files_left = MAX_FILES - 1  # stretch.json is one
            for w in halves + originals:  # what comes back is bounded: keep what fits, say what did not
                size, pieces = w.stat().st_size, -(-w.stat().st_size // part)
                if size > room or pieces > files_left:
                    report["weights_left_behind"].append(w.name)
                    continue
                room, files_left = room - size, files_left - pieces
                report["weights"][w.name] = _split(w, out, part)
            report["fp32_originals"] = [w.name for w in originals if w.name in report["weights"]]
        except Exception as e:  # noqa: BLE001
            report["weights_error"] = f"{type(e).__name__}: {e}"

    if args.reach_images:
        report["steps"]["reach"], report["reach"] = _reach(args, run_dir, work, py, left() - HARVEST_MIN * 30,
                                                           dev == "cuda")

    if background is not None:
        proc, js, log, t0 = background
        try:
            proc.wait(timeout=max(1.0, left()))
            rc: Any = proc.returncode
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = "timeout"
        report["steps"]["cross_device"] = {"rc": rc, "seconds": round(time.time() - t0, 1),
                                           "tail": log.read_text(errors="replace")[-TAIL_CHARS:]}
        if js.exists():
            report["cross_device"] = json.loads(js.read_text())

    report["seconds"] = round(time.time() - t_start, 1)
    (out / "stretch.json").write_text(json.dumps(report, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    failed = [k for k, v in report["steps"].items() if v.get("rc") not in (0, None)]
    print(f"stretch done in {report['seconds']:.0f} s; steps: "
          + ", ".join(f"{k}={v.get('rc', v.get('skipped'))}" for k, v in report["steps"].items()))
    if report.get("throughput"):
        for row in report["throughput"]:
            print(f"  {row['what']:16s} batch {row['batch']:3d} {row.get('variant', 'eager'):18s} "
                  f"{row['img_per_s']:8.1f} img/s")
    for line in (report["steps"].get("train", {}).get("tail") or "").splitlines()[-4:]:
        print("  train:", line[-300:])
    for line in (report["steps"].get("reach", {}).get("tail") or "").splitlines()[-8:]:
        print("  reach:", line[-300:])
    return 1 if failed else 0


def _joined_log(dst: Path, report: dict[str, Any], held_sha256: Optional[str], joined_sha256: Optional[str]
                ) -> list[str]:
    """The harvest's ``log.csv`` lines, after the earlier stretches' rows in ``dst/log.csv`` when the harvest
    continued the partial checkpoint that ``dst`` held (``held_sha256``; or was joined there already: it then
    holds this harvest's own partial, ``joined_sha256``). A continued run's log starts at the step it went on
    from; its ledger already holds the earlier stretches'."""
    lines = list(report["log_csv"])
    old_log = dst / "log.csv"
    if held_sha256 is None or held_sha256 not in (report.get("continued_from_sha256"), joined_sha256) \
            or not old_log.is_file():
        return lines

    def key(line: str) -> tuple[str, ...]:  # (stage, step)
        row = next(csv.reader([line]), [])
        return tuple(row[0:3:2])

    new = {key(line) for line in lines[1:]}
    earlier = [line for line in old_log.read_text().splitlines()[1:] if line and key(line) not in new]
    print(f"log.csv: {len(earlier)} rows of the earlier stretches kept before this one's {len(lines) - 1}")
    return lines[:1] + earlier + lines[1:]


def join(args: argparse.Namespace) -> int:
    """Reassemble a harvest (``stretch.json`` + weight files/parts) into ``--into``, checking every sha256; a
    harvest that continued the partial checkpoint ``--into`` holds keeps the earlier rows of its ``log.csv``."""
    src, dst = Path(args.files), Path(args.into)
    report = json.loads((src / "stretch.json").read_text())
    dst.mkdir(parents=True, exist_ok=True)
    held = hashlib.sha256((dst / "partial.safetensors").read_bytes()).hexdigest() \
        if (dst / "partial.safetensors").is_file() else None
    joined = None
    originals = set(report.get("fp32_originals") or [])
    for name, parts in (report.get("weights") or {}).items():
        data = bytearray()
        for part in parts:
            chunk = (src / part["file"]).read_bytes()
            if hashlib.sha256(chunk).hexdigest() != part["sha256"] or len(chunk) != part["bytes"]:
                raise SystemExit(f"{src / part['file']}: sha256 or size differs from stretch.json: not joined")
            data += chunk
        # float32 originals are for bench/half_check.py, not for the repository: fp32/ is git-ignored
        target = dst / "fp32" / name if name in originals else dst / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(bytes(data))
        digest = hashlib.sha256(data).hexdigest()
        if name == "partial.safetensors":
            joined = digest
        print(f"wrote {target} ({len(data)} bytes, sha256 {digest[:16]}…)")
    if report.get("ledger"):
        (dst / "ledger.jsonl").write_text("".join(json.dumps(r) + "\n" for r in report["ledger"]))
    if report.get("log_csv"):
        (dst / "log.csv").write_text("\n".join(_joined_log(dst, report, held, joined)) + "\n")
    if report.get("config_yaml"):
        (dst / "config.yaml").write_text(report["config_yaml"])
    (dst / "stretch.json").write_text(json.dumps(report, indent=1))
    return 0


def make_subset(args: argparse.Namespace) -> int:
    """Copy only the seeded subset a run trains on (prompt modules, LoRA, reach probes: 10 %) for travel."""
    sys.path.insert(0, str(ROOT))
    from lpm.train.sampler import write_declared_subset

    source = Path(args.data_dir) / args.set
    dest = Path(args.into) / args.set
    try:
        declared = write_declared_subset(source, dest, set_name=args.set, splits=args.splits,
                                         fraction=args.fraction, seed=args.seed)
    except (FileExistsError, FileNotFoundError, NotADirectoryError, ValueError) as e:
        print(f"gpu_stretch.py subset: {e}", file=sys.stderr)
        return 2
    size = sum(p.stat().st_size for p in declared.paths)
    print(f"wrote {len(declared.files)} of {declared.images_in_set} images of {args.set} ({size / 2**20:.1f} MiB) to "
          f"{dest}: serves runs with splits {args.splits}, data fraction {args.fraction:g}, seed {args.seed} only")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["subset"]:
        ap = argparse.ArgumentParser(prog="gpu_stretch.py subset", description=make_subset.__doc__ + (
            " The copy holds a marker (LPM_SUBSET.json) with every file's sha256; a run whose splits, data "
            "fraction or seed differ is refused by the trainer, never given a smaller set."))
        ap.add_argument("--data-dir", required=True, help="folder holding the whole set (e.g. ../shared/data)")
        ap.add_argument("--into", required=True, help="folder to create SET/ in (e.g. .gpu_data); SET/ must not exist")
        ap.add_argument("--set", default="bsds500")
        ap.add_argument("--splits", nargs="+", default=["train", "val", "test"])
        ap.add_argument("--fraction", type=float, default=0.1, help="data fraction of the runs it serves (0.1)")
        ap.add_argument("--seed", type=int, default=0, help="seed of those runs (configs' seed; 0)")
        return make_subset(ap.parse_args(argv[1:]))
    if argv[:1] == ["join"]:
        ap = argparse.ArgumentParser(prog="gpu_stretch.py join", description=join.__doc__)
        ap.add_argument("files", help="the folder the harvest came back to (the device tool's files_at)")
        ap.add_argument("--into", required=True, help="where to write the joined weights and records")
        return join(ap.parse_args(argv[1:]))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="where the harvest goes (on the GPU machine: $OUT)")
    ap.add_argument("--minutes", type=float, default=8.5, help="everything ends inside this (default 8.5)")
    ap.add_argument("--data-dir", help="folder holding bsds500/ (on the GPU machine: .gpu_data)")
    ap.add_argument("--train", help="run config to train (configs/*.yaml)")
    ap.add_argument("--continue-from", help="partial checkpoint of that run to continue from")
    ap.add_argument("--throughput", action="store_true", help="measure training throughput first")
    ap.add_argument("--throughput-batches", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--throughput-steps", type=int, default=30)
    ap.add_argument("--throughput-config", default="tic")
    ap.add_argument("--throughput-variants", nargs="+", default=["eager", "channels-last"],
                    help="bench/train_throughput.py variants (eager, channels-last, compile, compile-cudagraphs)")
    ap.add_argument("--throughput-timeout", type=float, default=150.0, help="seconds per batch size")
    ap.add_argument("--cross-device", metavar="DIR", help="images for bench/cross_device.py (needs CUDA)")
    ap.add_argument("--cross-model", default="tiny-smoke")
    ap.add_argument("--cpu-threads", type=int, default=8, help="CPU threads of the cross-device process")
    ap.add_argument("--reach-images", metavar="DIR", help="run the reach probe (campaign step 3), evaluated on DIR")
    ap.add_argument("--reach-init", help="base to probe (default: the weights the train step produced)")
    ap.add_argument("--reach-minutes", type=float, default=4.0, help="minutes kept for the reach probe (default 4)")
    ap.add_argument("--reach-steps", type=int, default=300, help="training steps per probe")
    ap.add_argument("--reach-batch", type=int, default=16)
    ap.add_argument("--reach-crop", type=int, default=256)
    ap.add_argument("--reach-limit", type=int, default=8, help="evaluation images (the first N of DIR)")
    ap.add_argument("--reach-rates", type=float, nargs="+", help="probed λ (default: one notch each side)")
    ap.add_argument("--reach-variants", nargs="+", default=["prompts", "separate", "gain"],
                    choices=["prompts", "gain", "separate", "lora", "hidden", "hidden_add"],
                    help="in this order, per rate")
    ap.add_argument("--reach-lora-rank", type=int, default=7,
                    help="rank of the lora probes (7: one rate's adapters the size of a tic prompt module)")
    ap.add_argument("--reach-lora-targets", nargs="+", choices=["qkv", "proj", "fc1", "fc2"],
                    help="layers of the lora probes (default all four; fc1 fc2: the MLPs only, the best frozen-base "
                         "ladder at smoke scale)")
    ap.add_argument("--reach-prompt", action="append", default=[], metavar="KEY=VALUE",
                    help="prompt-module setting for the probes (e.g. additive=true), repeatable")
    ap.add_argument("--reach-model", default="tic", help="zoo config of the prompt-module sizes")
    ap.add_argument("--reach-eval-device", default="cuda", help="transforms' device while evaluating (default cuda)")
    ap.add_argument("--part-mib", type=float, default=15.0, help="largest file brought back (MiB)")
    ap.add_argument("--total-mib", type=float, default=56.0, help="most weight bytes brought back (MiB)")
    return stretch(ap.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
