"""Train the tiny *smoke* checkpoint on the CPU with ``lpm train``, for demos, the main job and notebooks.

This is NOT the paper's model or budget: the tiny config (~0.1 M parameters), BSDS500 crops, minutes of CPU.
It exists so that the CLI, the round-trip job and the notebooks show real (if weak) compression before the
GPU-trained checkpoints are shipped. Every place that shows its numbers prints its budget string.

    OMP_NUM_THREADS=1 python scripts/make_smoke_checkpoint.py --data-dir /path/holding/bsds500

A thin driver of the training runner (:class:`lpm.train.runner.Runner`, what ``lpm train`` runs):

1. ``configs/tiny-smoke-base.yaml`` -> ``results/runs/tiny-smoke-base/model.safetensors``;
2. ``configs/tiny-smoke-prompts.yaml`` with ``init:`` that base -> ``results/runs/tiny-smoke-prompts/``;
3. the prompted checkpoint, re-saved with the same tensors to ``results/checkpoints/tiny-smoke.safetensors``
   with a budget string built from both runs' ledgers (and both ledgers in its ``meta``); it prints the
   sha256 and budget for the ``tiny-smoke`` entry of :data:`lpm.zoo.CHECKPOINTS`.

Both runs are resumable: after an interruption, run the same command with ``--resume``. The run folders are
not committed (``results/runs/`` is ignored); only the checkpoint is.

``--lora`` (issue 14) makes the same-budget low-rank-adapter smoke checkpoint instead: step 1 as above (with
``--resume`` a finished base run is reused as it is), then ``configs/tiny-smoke-lora.yaml`` (same steps, lr,
crops and data subset as the prompts) -> ``results/runs/tiny-smoke-lora/`` ->
``results/checkpoints/tiny-smoke-lora.safetensors`` (the ``tiny-smoke-lora`` zoo entry); ``tiny-smoke`` is
not touched::

    OMP_NUM_THREADS=1 python scripts/make_smoke_checkpoint.py --data-dir DIR --resume --lora

``--prompts-only`` makes the paper's method at the same budget: prompt modules alone, no latent gain
(``configs/tiny-smoke-prompts-only.yaml``, the same steps, lr, crops and subset as tiny-smoke's prompts), on
the frozen base *inside* ``results/checkpoints/tiny-smoke.safetensors`` (``--base-from``; bit for bit, so no
base is trained and the base's ledger comes from that file's meta) -> ``results/runs/tiny-smoke-prompts-only/``
-> ``results/checkpoints/tiny-smoke-prompts-only.safetensors`` (the ``tiny-smoke-prompts-only`` zoo entry)::

    OMP_NUM_THREADS=1 python scripts/make_smoke_checkpoint.py --data-dir DIR --prompts-only

``--hidden`` is the same on the same base with ``configs/tiny-smoke-hidden.yaml`` instead (beyond the paper:
token-fed additive prompts at prompt stride 1, the same steps, lr, crops and subset) ->
``results/checkpoints/tiny-smoke-hidden.safetensors`` (the ``tiny-smoke-hidden`` zoo entry)::

    OMP_NUM_THREADS=1 python scripts/make_smoke_checkpoint.py --data-dir DIR --hidden
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lpm import zoo
from lpm.checkpoints import load_codec, save_codec
from lpm.train.ledger import totals
from lpm.train.runner import Runner, load_config

CONFIGS = zoo.PROJECT_ROOT / "configs"


def _run(config: Path, args: argparse.Namespace, **overrides) -> tuple[Runner, list[Path]]:
    cfg = load_config(config, out_dir=str(Path(args.runs_dir) / load_config(config).name), **overrides)
    runner = Runner(cfg, data_dir=args.data_dir, device="cpu", progress=not args.no_progress)
    written = runner.run(resume=args.resume)
    if len(written) != len(runner.stages):
        raise SystemExit(f"{cfg.name} stopped before its end; continue with --resume")
    print(runner.budget_string(), flush=True)
    return runner, written


def _ledger(runner: Runner) -> list[dict]:
    return [json.loads(line) for line in (runner.out / "ledger.jsonl").read_text().splitlines() if line.strip()]


def budget(base_records: list[dict], prompts: Runner, threads: int) -> str:
    """The smoke budget line, from the base's ledger records and the second run (prompts, or low-rank adapters)."""
    prompt_records = _ledger(prompts)
    b, p = totals(base_records), totals(prompt_records)
    first = base_records[0]
    pd, pc = prompts.cfg.data, prompts.cfg
    n_rates = len(prompt_records)
    if pc.kind == "lora":
        from lpm.models import LoRAConfig

        lc = LoRAConfig.from_dict(pc.lora or {})
        what, part = (f" + low-rank rate adapters (LoRACodec, rank {lc.rank} on {'/'.join(lc.targets)} of every "
                      f"Swin block)"), "adapters"
    elif pc.prompt.get("enc_source") == "hidden" or pc.prompt.get("dec_source") == "hidden":
        additive = (" additive-only" if pc.prompt.get("kv_prompts") is False
                    else " additive" if pc.prompt.get("additive") else "")
        what = (", token-fed" + additive + " prompts (beyond the paper: "
                "each Swin block's heads read its own tokens" + (f", prompt stride {pc.prompt_stride}" if pc.prompt_stride
                                                               else "") + ")")
        part = "prompts"
    else:
        what = (" + per-rate latent gain (beyond the paper)" if pc.prompt.get("latent_gain")
                else ", the paper's method: prompts alone (no latent gain)")
        part = "prompts"
    return (
        f"smoke checkpoint, NOT the paper's model or budget: tiny config{what}, trained with `lpm train` on the "
        f"CPU ({threads} thread{'s' if threads > 1 else ''}), {b['cpu_minutes'] + p['cpu_minutes']:.1f} CPU-minutes; "
        f"base {int(b['steps'])} steps x {first['batch']} crops of {first['crop']}px on {first['images_seen']} BSDS500 "
        f"images ({b['cpu_minutes']:.1f} min); {part} {pc.steps} steps/rate x {n_rates} rates x {pd.batch} crops "
        f"of {pd.crop}px on {len(prompts.stages[0].paths)} images ({p['cpu_minutes']:.1f} min); "
        f"{b['crops'] + p['crops']} crops in all"
    )


def _base_from(path: Path) -> tuple[list[dict], dict]:
    """The base ledger records and base run config carried in a shipped smoke checkpoint's meta."""
    meta = load_codec(path).meta
    records = [r for r in meta.get("ledger", []) if r.get("kind") == "base"]
    if not records or "base" not in meta.get("runs", {}):
        raise SystemExit(f"{path} carries no base ledger/run config in its meta; it cannot serve as --prompts-only base")
    return records, meta["runs"]["base"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", help="directory holding bsds500/ (default: $LPM_DATA_DIR or data/)")
    ap.add_argument("--out", default=str(zoo.CHECKPOINT_DIR / "tiny-smoke.safetensors"))
    ap.add_argument("--base-config", default=str(CONFIGS / "tiny-smoke-base.yaml"))
    ap.add_argument("--prompts-config", default=str(CONFIGS / "tiny-smoke-prompts.yaml"))
    ap.add_argument("--lora", action="store_true",
                    help="make the low-rank-adapter smoke checkpoint (--lora-config, --lora-out) instead of tiny-smoke")
    ap.add_argument("--lora-config", default=str(CONFIGS / "tiny-smoke-lora.yaml"))
    ap.add_argument("--lora-out", default=str(zoo.CHECKPOINT_DIR / "tiny-smoke-lora.safetensors"))
    ap.add_argument("--prompts-only", action="store_true",
                    help="make the prompts-alone smoke checkpoint (the paper's method; --prompts-only-config, "
                    "--prompts-only-out) on the base inside --base-from, instead of tiny-smoke")
    ap.add_argument("--prompts-only-config", default=str(CONFIGS / "tiny-smoke-prompts-only.yaml"))
    ap.add_argument("--prompts-only-out", default=str(zoo.CHECKPOINT_DIR / "tiny-smoke-prompts-only.safetensors"))
    ap.add_argument("--hidden", action="store_true",
                    help="make the token-fed additive prompts smoke checkpoint (beyond the paper; --hidden-config, "
                    "--hidden-out) on the base inside --base-from, instead of tiny-smoke")
    ap.add_argument("--hidden-config", default=str(CONFIGS / "tiny-smoke-hidden.yaml"))
    ap.add_argument("--hidden-out", default=str(zoo.CHECKPOINT_DIR / "tiny-smoke-hidden.safetensors"))
    ap.add_argument("--base-from", default=str(zoo.CHECKPOINT_DIR / "tiny-smoke.safetensors"),
                    help="--prompts-only/--hidden: the shipped checkpoint whose frozen base (and base ledger) is reused")
    ap.add_argument("--runs-dir", default=str(zoo.PROJECT_ROOT / "results" / "runs"), help="where the run folders go")
    ap.add_argument("--base-steps", type=int, help="override the base config's steps")
    ap.add_argument("--prompt-steps", type=int, help="override the prompts config's steps (per rate)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as the budget assumes)")
    ap.add_argument("--resume", action="store_true", help="continue both runs where they stopped")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.lora + args.prompts_only + args.hidden > 1:
        ap.error("--lora, --prompts-only and --hidden make different checkpoints; pick one")

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.prompts_only or args.hidden:
        # the base shipped inside tiny-smoke, bit for bit: no base training, its ledger from that file's meta
        base_file = Path(args.base_from)
        base_records, base_run = _base_from(base_file)
        second, out = ((Path(args.hidden_config), args.hidden_out) if args.hidden
                       else (Path(args.prompts_only_config), args.prompts_only_out))
        prompts, written = _run(second, args, steps=args.prompt_steps, init=str(base_file.resolve()))
        base_name = f"the base inside {base_file.name}"
    else:
        base, (base_model,) = _run(Path(args.base_config), args, steps=args.base_steps)
        base_records, base_run, base_name = _ledger(base), base.cfg.to_dict(), Path(args.base_config).name
        second = Path(args.lora_config if args.lora else args.prompts_config)
        out = args.lora_out if args.lora else args.out
        prompts, written = _run(second, args, steps=args.prompt_steps, init=str(base_model))
    wall = (time.perf_counter() - t0) / 60

    ck = load_codec(written[-1])
    line = budget(base_records, prompts, args.threads)
    flag = " --lora" if args.lora else " --prompts-only" if args.prompts_only else " --hidden" if args.hidden else ""
    ledger = base_records + _ledger(prompts)
    meta = {
        **ck.meta,
        "budget": line,
        "ledger": ledger,
        "made_by": f"scripts/make_smoke_checkpoint.py{flag} (lpm train: {base_name}, {second.name})",
        "runs": {"base": base_run, "prompts": prompts.cfg.to_dict()},
        "config": "tiny",
        "latent_gain": bool(prompts.cfg.prompt.get("latent_gain")),
        "cpu_minutes": round(sum(r["cpu_minutes"] for r in ledger), 2),
        "base_steps": int(totals(base_records)["steps"]),
        "prompt_steps_per_rate": prompts.cfg.steps,
        "batch": prompts.cfg.data.batch,
        "crop": prompts.cfg.data.crop,
        "prompt_images": [str(p.relative_to(prompts.data_root)) for p in prompts.stages[0].paths],
    }
    if args.lora:
        meta["lora_config"] = ck.model.lora_config.to_dict()
        meta["adapter_steps_per_rate"] = meta.pop("prompt_steps_per_rate")
        meta["adapter_images"] = meta.pop("prompt_images")
        meta.pop("latent_gain")
        meta["runs"] = {"base": base_run, "lora": prompts.cfg.to_dict()}
    sha = save_codec(out, ck.model, meta=meta)
    print(f"wrote {out} sha256={sha} ({wall:.1f} min wall)\n{line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
