"""Can prompts alone hold a rate that a latent gain reached? Two recipes that end in a prompts-only module.

The reach probe (``bench/reach_probe.py``) found that, on a frozen smoke-scale base, prompt modules trained
with the RD loss leave the rate where the base put it, while the latent gain (our extension) moves it as far
as a separate model. Both recipes here hand the prompts a rate move and then take the gain away, so that
what is left is the paper's inference architecture (prompts only, no gain):

* ``--mode anneal`` — one module with the gain is trained with the RD loss at ``--rate``; after
  ``--free`` of the steps the gain is scaled down linearly to zero (reached at 90 % of the steps), so the
  prompts must take over the move a little at a time;
* ``--mode distill`` — a trained prompts + gain module (``--teacher``, e.g. a reach-probe ``gain`` run)
  teaches a prompts-only student started from its prompt nets: RD loss plus ``--beta-y`` × the squared
  distance to the teacher's latent and ``--beta-x`` × λ·255² × the squared distance to its decoded image.

Then the prompts-only module is saved and coded on ``--images`` with real bitstreams; its bpp and PSNR are
printed and written (``--json``) beside the base's. On the CPU smoke base these recipes did **not** give
prompts the rate (README, "The measured risk"): kept as the measurement, and for the GPU campaign.

    python bench/prompt_takeover.py --mode anneal --init BASE.safetensors --rate 0.025 --data-dir DIR --images DIR/kodak
    python bench/prompt_takeover.py --mode distill --teacher GAIN_RUN/model.safetensors --rate 0.025 --data-dir DIR \\
        --images DIR/kodak
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def gain_factor(step: int, steps: int, free: float) -> float:
    """The anneal schedule: 1 for the first ``free`` share of the steps, then linear down to 0 at 90 %."""
    start, end = free * steps, 0.9 * steps
    if step < start:
        return 1.0
    return max(0.0, 1.0 - (step - start) / max(end - start, 1e-9))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", required=True, choices=["anneal", "distill"])
    ap.add_argument("--init", help="base checkpoint (anneal)")
    ap.add_argument("--teacher", help="prompts + latent-gain checkpoint (distill)")
    ap.add_argument("--rate", type=float, required=True, help="the λ of the module")
    ap.add_argument("--data-dir", required=True, help="folder holding bsds500/")
    ap.add_argument("--images", required=True, help="evaluation images (e.g. DIR/kodak)")
    ap.add_argument("--model", default="tic", help="zoo config whose prompt-module sizes are used (anneal)")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--free", type=float, default=0.4, help="anneal: share of the steps with the full gain")
    ap.add_argument("--beta-y", type=float, default=1.0)
    ap.add_argument("--beta-x", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", default=None, help="where the module goes (default: results/runs/prompt-takeover)")
    ap.add_argument("--json", help="write the numbers here")
    args = ap.parse_args(argv)
    need = "init" if args.mode == "anneal" else "teacher"
    if not getattr(args, need):
        ap.error(f"--mode {args.mode} needs --{need}")
    if not 0 <= args.free < 0.9:
        ap.error("--free must be in [0, 0.9)")

    from lpm import zoo
    from lpm.checkpoints import save_codec
    from lpm.data import find_images, locate_dataset
    from lpm.eval.rd import evaluate_codec
    from lpm.models import PromptConfig, PromptedCodec
    from lpm.paths import PROJECT_ROOT
    from lpm.provenance import environment
    from lpm.train.losses import RateDistortionLoss
    from lpm.train.sampler import CropSampler, subset

    torch.manual_seed(args.seed)
    loaded = zoo.load(args.init if args.mode == "anneal" else args.teacher)
    base, r0, rate = loaded.model.base, float(loaded.base_rate), args.rate
    rates = sorted([r0, rate])
    if args.mode == "anneal":
        cfg = {**zoo.CONFIGS.get(args.model, zoo.CONFIGS["tic"])["prompt"], "latent_gain": True}
        teacher = None
        trained = PromptedCodec(base, rates, r0, PromptConfig.from_dict(cfg))
    else:
        teacher = loaded.model.eval()
        if teacher.module(rate).log_gain is None:
            ap.error(f"{args.teacher}: its module for λ={rate:g} has no latent gain to distil")
        cfg = teacher.prompt_config.to_dict()
        trained = None
    student_cfg = PromptConfig.from_dict({**cfg, "latent_gain": False})
    student = PromptedCodec(base, rates, r0, student_cfg)
    if teacher is not None:
        student.load_state_dict({k: v for k, v in teacher.state_dict().items() if not k.endswith("log_gain")})
    learner = trained if trained is not None else student
    module = learner.module(rate)
    root = locate_dataset("bsds500", args.data_dir)
    paths = subset(sorted(p for s in ("train", "val", "test") for p in find_images(root / s)), args.fraction, args.seed)
    sampler = CropSampler(paths, args.crop, args.batch, seed=args.seed + 1)
    opt = torch.optim.Adam(module.parameters(), lr=args.lr)
    criterion = RateDistortionLoss(rate)
    src = learner.prompt_source(rate)
    t_src = teacher.prompt_source(rate) if teacher is not None else None
    learner.train()
    log, t0 = [], time.perf_counter()
    for step in range(args.steps):
        if args.mode == "anneal":
            src.strength = gain_factor(step, args.steps, args.free)  # scales the gain only (prompt logit fixed)
        x = sampler.next()
        out = base(x, src)
        losses = criterion(out, x)
        loss = losses["loss"]
        if t_src is not None:
            with torch.no_grad():
                y_t, _ = base._analysis(base.pad(x), t_src)
                base.eval()
                x_t = base(x, t_src)["x_hat"]
                base.train()
            y_s, _ = base._analysis(base.pad(x), src)
            loss = loss + args.beta_y * (y_s - y_t).pow(2).mean()
            loss = loss + args.beta_x * rate * 255**2 * (out["x_hat"] - x_t).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()
        if (step + 1) % max(1, args.steps // 10) == 0:
            log.append({"step": step + 1, "loss": loss.item(), "bpp": losses["bpp_loss"].item(),
                        "mse": losses["mse_loss"].item(),
                        **({"gain_factor": src.strength} if args.mode == "anneal" else {})})
            print(log[-1], flush=True)
    minutes = (time.perf_counter() - t0) / 60
    if trained is not None:  # the prompts-only module: the trained prompt nets without the gain
        student.load_state_dict({k: v for k, v in trained.state_dict().items() if not k.endswith("log_gain")})
    student.eval()
    out_dir = Path(args.out_dir) if args.out_dir else PROJECT_ROOT / "results" / "runs" / "prompt-takeover"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{args.mode}-{rate:g}.safetensors"
    budget = (f"prompt-takeover {args.mode}: {args.steps} steps x {args.batch} crops of {args.crop}px on "
              f"{args.fraction:.0%} of bsds500 (lr {args.lr:g}), {minutes:.2f} CPU-minutes")
    save_codec(path, student, meta={"base_rate": r0, "budget": budget})
    images = find_images(args.images)
    ck = zoo.load(str(path))
    res = evaluate_codec(ck, images, [r0, rate], progress=False)["results"]
    at = {r: i for i, r in enumerate(res["rate"])}
    i0, i1 = at[r0], at[rate]
    row = {"mode": args.mode, "rate": rate, "base_bpp": res["bpp"][i0], "base_psnr": res["psnr-rgb"][i0],
           "bpp": res["bpp"][i1], "psnr": res["psnr-rgb"][i1], "train_minutes": minutes, "checkpoint": str(path),
           "training_log": log}
    row["bpp_change_vs_base_rate"] = row["bpp"] / row["base_bpp"] - 1
    print(f"prompts-only module at λ={rate:g} ({args.mode}): {row['bpp']:.4f} bpp "
          f"({100 * row['bpp_change_vs_base_rate']:+.1f} % vs the base rate's {row['base_bpp']:.4f}), "
          f"{row['psnr']:.2f} dB ({row['psnr'] - row['base_psnr']:+.2f}); {len(images)} images, real bytes")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "meta": {**environment(torch.device("cpu")), "init_sha256": loaded.sha256, "init": str(loaded.path),
                     "budget": budget, "args": {k: v for k, v in vars(args).items() if k != "json"}},
            "row": row}, indent=2, allow_nan=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
