"""Train the tiny *smoke* checkpoint on the CPU: a few minutes, for demos, the main job and notebooks.

This is NOT the paper's model or budget: the tiny config (~0.1 M parameters), BSDS500 crops, minutes of CPU.
It exists so that the CLI, the round-trip job and the notebooks show real (if weak) compression before the
GPU-trained checkpoints are shipped. Every place that shows its numbers prints its budget string.

    python scripts/make_smoke_checkpoint.py --data-dir ../shared/data --minutes 6
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lpm import zoo
from lpm.data import ImageFolderDataset, find_images, locate_dataset
from lpm.train.checkpoint import save_codec
from lpm.train.loops import infinite, progressive_order, train_base, train_prompt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", help="directory holding bsds500/ (default: $LPM_DATA_DIR or data/)")
    ap.add_argument("--out", default=str(zoo.CHECKPOINT_DIR / "tiny-smoke.safetensors"))
    ap.add_argument("--base-steps", type=int, default=3000)
    ap.add_argument("--prompt-steps", type=int, default=400)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--data-fraction", type=float, default=0.1, help="share of the images for prompt learning")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--no-latent-gain", dest="latent_gain", action="store_false",
        help="prompts only (paper-faithful); by default the smoke model adds the per-rate latent gain, because "
        "prompts alone barely move the rate in minutes of CPU training",
    )
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    root = locate_dataset("bsds500", args.data_dir)
    images = find_images(root / "train") + find_images(root / "val")
    g = torch.Generator().manual_seed(args.seed)
    subset = [images[i] for i in torch.randperm(len(images), generator=g)[: max(1, int(len(images) * args.data_fraction))].tolist()]

    def loader(paths):
        ds = ImageFolderDataset(paths, crop_size=args.crop, hflip=True, vflip=True)
        return infinite(torch.utils.data.DataLoader(ds, batch_size=args.batch, shuffle=True, drop_last=True, num_workers=1))

    from lpm.models import PromptConfig, PromptedCodec

    tiny = zoo.build("tiny")
    pcfg = PromptConfig.from_dict({**zoo.CONFIGS["tiny"]["prompt"], "latent_gain": args.latent_gain})
    codec = PromptedCodec(tiny.base, tiny.rates, tiny.base_rate, pcfg)
    log = lambda r: print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}), flush=True)  # noqa: E731
    t0 = time.perf_counter()
    print(f"base: {len(images)} images, λ={codec.base_rate}, {args.base_steps} steps", flush=True)
    train_base(codec.base, loader(images), args.base_steps, codec.base_rate, lr=1e-3, log=log, log_every=250)
    t_base = time.perf_counter() - t0
    codec.base.requires_grad_(False)
    for rate, init in progressive_order(codec):
        if init != codec.base_rate:
            codec.module(rate).load_state_dict(codec.module(init).state_dict())
        print(f"prompts: λ={rate} (from {init}), {len(subset)} images, {args.prompt_steps} steps", flush=True)
        train_prompt(codec, rate, loader(subset), args.prompt_steps, lr=1e-3, log=log, log_every=100)
    minutes = (time.perf_counter() - t0) / 60
    budget = (
        f"smoke checkpoint, NOT the paper's model or budget: tiny config"
        f"{' + per-rate latent gain (beyond the paper)' if args.latent_gain else ', prompts only'}, CPU ({torch.get_num_threads()} threads), "
        f"{minutes:.1f} min; base {args.base_steps} steps x {args.batch} crops of {args.crop}px on {len(images)} "
        f"BSDS500 images ({t_base / 60:.1f} min); prompts {args.prompt_steps} steps/rate on {len(subset)} images"
    )
    meta = {
        "budget": budget,
        "config": "tiny",
        "latent_gain": args.latent_gain,
        "cpu_minutes": round(minutes, 2),
        "base_steps": args.base_steps,
        "prompt_steps_per_rate": args.prompt_steps,
        "batch": args.batch,
        "crop": args.crop,
        "prompt_images": [str(p.relative_to(root)) for p in subset],
    }
    sha = save_codec(args.out, codec.eval(), meta=meta)
    print(f"wrote {args.out} sha256={sha}\n{budget}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
