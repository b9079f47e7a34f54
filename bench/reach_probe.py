"""How far does one prompt module move the rate of a frozen base? (the measured risk; campaign step 3)

For a base checkpoint (``--init``, a bare base or a finished/partial base run), trains one prompt module
one λ notch away on each side of the base's λ (or the rates named with ``--rates``), once with prompts alone
(the paper's method) and once with the latent gain added (``latent_gain``, our extension), each as a real
``kind: prompts`` run of the training engine (:class:`lpm.train.runner.Runner`: frozen base, the seeded
data subset, the same steps). Then codes the Kodak images (``--images``) with real bitstreams at the base
rate and at each probed rate, and reports per probe: bpp and PSNR, the bpp change against the base rate
(the *reach*), and the RD cost ``λ·255²·MSE + bpp`` at the probed λ against what the base itself achieves
there (a prompt module that lowers the cost at its λ is doing its job even when the bpp moves little).

``--variants … separate`` adds the control: a copy of the base fine-tuned with *all* its parameters at the
probed λ (a ``kind: separate`` run) on the same images for the same steps — how far the rate can move at
all in that budget from that base. Prompts that move the rate little while the control moves it far point
at the prompts; both moving little point at the budget. The control trains at ``--control-lr`` (default
1e-4): a learning rate made for fresh prompt nets (``--lr``) wrecks a converged base when it reaches all of its
weights (measured: lr 2e-3 gave the smoke base a *worse* RD cost than it started with).

    python bench/reach_probe.py --init BASE.safetensors --data-dir DIR --images DIR/kodak --steps 300
    python bench/reach_probe.py --init … --rates 0.0067 0.025 --variants prompts --json out.json
    python bench/reach_probe.py --merge a.json b.json --json both.json     # probes of one base, one table

``--variants … lora`` adds a second kind of frozen-base adapter with the same budget: low-rank rate adapters
(a ``kind: lora`` run, rank ``--lora-rank``, on qkv/proj/fc1/fc2 of every Swin block of all four
transforms, :class:`lpm.models.LoRACodec`; ``--lora-targets qkv proj`` keeps them to the attention). At smoke scale such adapters moved the rate where prompt modules
of three times their size did not, so a probe that has both tells a wall of the prompt mechanism from a wall
of freezing the base.

``--variants … hidden`` (beyond the paper) adds prompt modules whose prompts come from each Swin block's own
input tokens on both sides (``enc_source=dec_source=hidden``) with an additive half, at prompt stride 1 (a
copy of the base with the same weights): a head per block that adds a per-token low-rank update to the
block's residual stream, besides its prompt keys/values. At smoke scale this was the first prompt module
that moved the rate (README, "The measured risk"). Width ``--hidden-width`` (default: a prompt module's
parameter count of ``--model``, or just under it). ``--variants … hidden_add``: the same heads with the
additive half alone (``kv_prompts=false``: no prompt tokens in attention, so no extra attention cost).

``--prompt KEY=VALUE`` (repeatable) changes the prompt modules' sizes for the prompts/gain probes — the levers
against a short reach, e.g. ``--prompt enc_head_hidden=32`` (more capacity where the rate is decided) or
``--prompt head_init_scale=1`` (a less timid start); the JSON records them.

``--steps``, ``--batch``, ``--crop``, ``--lr`` and ``--fraction`` set the budget of every probe (the same for
all); the printed lines and the JSON say it. On a GPU (``--device cuda``) the probes train there; the
evaluation runs its transforms on ``--eval-device`` (default the CPU; ``cuda`` saves minutes there) and its
entropy coding on the CPU. ``--json`` is rewritten after the base and after every probe (``meta.complete``
false until the end), so a run cut short — a GPU stretch's deadline — keeps every probe it finished.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path

import torch

LADDER = [0.0018, 0.0035, 0.0067, 0.013, 0.025, 0.0483]


def neighbours(base_rate: float, ladder: list[float]) -> list[float]:
    """The ladder's rates one notch below and above ``base_rate`` (one at the ends)."""
    below = [r for r in ladder if r < base_rate * (1 - 1e-9)]
    above = [r for r in ladder if r > base_rate * (1 + 1e-9)]
    return ([below[-1]] if below else []) + ([above[0]] if above else [])


def parse_prompt_settings(ap: argparse.ArgumentParser, items: list[str]) -> dict:
    """``--prompt`` items as PromptConfig overrides (:func:`lpm.models.prompt_settings`); a usage error if bad."""
    from lpm.models import prompt_settings

    try:
        return prompt_settings(items)
    except ValueError as e:
        ap.error(f"--prompt {e}")


def training_log(path: Path) -> list[dict]:
    """The run's logged steps as ``{"step", "loss", "bpp", "psnr"}`` (estimated from likelihoods on the
    training crops: how the rate moved during the probe, not real bytes)."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [{"step": int(r["step"]), **{k: float(r[k]) for k in ("loss", "bpp", "psnr")}} for r in csv.DictReader(f)]


def against_control(rows: list[dict]) -> list[dict]:
    """Each prompts/gain row with its share of what the ``separate`` control reached at the same λ:
    ``reach_share`` = its bpp change / the control's, ``rd_gain_share`` = its RD-cost gain over the base alone
    / the control's (``None`` without a control, or where the control's own change is zero)."""
    control = {r["rate"]: r for r in rows if r["variant"] == "separate"}
    out = []
    for r in rows:
        c = control.get(r["rate"])
        share = lambda a, b: a / b if c is not None and b != 0 else None  # noqa: E731
        r = dict(r)
        if r["variant"] != "separate":
            r["reach_share"] = share(r["bpp_change_vs_base_rate"], c and c["bpp_change_vs_base_rate"])
            r["rd_gain_share"] = share(r["rd_cost_base_alone"] - r["rd_cost"],
                                       c and c["rd_cost_base_alone"] - c["rd_cost"])
        out.append(r)
    return out


def markdown_table(data: dict) -> str:
    """The probe's rows as a Markdown table (with the control shares where a ``separate`` row exists)."""
    base = data["base"]
    lines = [f"| probe | bpp | vs base rate ({base['bpp']:.4f} bpp, {base['psnr']:.2f} dB) | PSNR change | "
             "RD cost at its λ (base alone) | share of the control's bpp change | share of its RD gain | trained parameters |",
             "|---|---|---|---|---|---|---|---|"]
    names = {"prompts": "prompts alone", "gain": "prompts + latent gain", "separate": "separate model (control)",
             "lora": "low-rank adapters", "hidden": "token-fed additive prompts",
             "hidden_add": "token-fed additive-only prompts (no keys/values)",
             "prompts (additive)": "prompts alone"}  # the variant's name in files of 2026-12-01 (settings follow)
    pct = lambda v: "—" if v is None else f"{100 * v:.0f} %"  # noqa: E731
    for r in against_control(data["rows"]):
        name = names.get(r["variant"], r["variant"])  # older files name their variant in words
        settings = [f"{k}={v}" for k, v in (r.get("prompt_settings") or {}).items()]
        if r["variant"] in ("hidden", "hidden_add"):
            settings = [f"width {r['prompt_settings'].get('enc_channels')}"]
        if r.get("prompt_stride") not in (None, 2) and r["variant"] in ("prompts", "gain", "hidden", "hidden_add"):
            settings.append(f"prompt stride {r['prompt_stride']}")
        if settings:
            name += " (" + ", ".join(settings) + ")"
        if r["variant"] == "lora":
            where = r.get("lora_transforms") or []
            layers = r.get("lora_targets") or []
            name += (f" (rank {r.get('lora_rank')}" + ("" if len(where) in (0, 4) else f", {'/'.join(where)} only")
                     + ("" if len(layers) in (0, 4) else f", {'/'.join(layers)} layers only") + ")")
        lines.append(f"| λ={r['rate']:g}, {name} | {r['bpp']:.4f} | "
                     f"{100 * r['bpp_change_vs_base_rate']:+.1f} % | {r['psnr_change_db']:+.2f} dB | "
                     f"{r['rd_cost']:.4f} ({r['rd_cost_base_alone']:.4f}) | {pct(r.get('reach_share'))} | "
                     f"{pct(r.get('rd_gain_share'))} | "
                     + ("—" if r.get("trained_parameters") is None else f"{r['trained_parameters']:,}") + " |")
    return "\n".join(lines)


def _weights_of(data: dict) -> str:
    """The sha256 of the base a probe started from (of the original for a restrided copy: same weights)."""
    return data["meta"].get("restrided_from_sha256") or data["meta"].get("init_sha256")


def merge(datas: list[dict], names: list[str]) -> dict:
    """Several probes' JSONs of one base as one (rows concatenated, control shares recomputed; each row says
    which file it came from). ``ValueError`` unless they share the base checkpoint (sha256) and its numbers."""
    if not datas:
        raise ValueError("nothing to merge")
    first = datas[0]
    for d, name in zip(datas, names):
        if not d.get("meta", {}).get("complete"):
            raise ValueError(f"{name}: an unfinished probe (meta.complete is not true)")
        if _weights_of(d) != _weights_of(first) or d["base"] != first["base"]:
            raise ValueError(f"{name}: another base than {names[0]} (checkpoint sha256 or base bpp/PSNR differ)")
    rows = [{**{k: v for k, v in r.items() if k not in ("reach_share", "rd_gain_share")},
             "prompt_stride": r.get("prompt_stride", d["meta"].get("prompt_stride")), "source": name}
            for d, name in zip(datas, names) for r in d["rows"]]
    if len({(r["rate"], r["variant"]) for r in rows if r["variant"] == "separate"}) != sum(
            r["variant"] == "separate" for r in rows):
        raise ValueError("two separate controls at the same λ: keep one")
    for r in rows:  # probes from before rows counted them: count from the checkpoint where it is still there
        if "trained_parameters" not in r and r.get("checkpoint") and Path(r["checkpoint"]).is_file():
            from lpm import zoo

            r["trained_parameters"] = trained_parameters(zoo.load(r["checkpoint"]).model, r["rate"])
    meta = {k: v for k, v in first["meta"].items() if k in ("init", "init_sha256", "init_budget", "base_rate")}
    if "restrided_from" in first["meta"]:
        meta.update(init=first["meta"]["restrided_from"], init_sha256=_weights_of(first))
    return {"meta": {**meta, "complete": True, "merged_from": [{"file": n, **d["meta"]} for d, n in zip(datas, names)]},
            "base": first["base"], "rows": against_control(rows)}


def with_prompt_stride(init, stride: int, folder: Path):
    """A copy of the base of ``init`` (a loaded checkpoint) with another ``prompt_stride``, written to
    ``folder`` and loaded back: the same weights (a base has no prompt parameters; the stride only lays out
    the prompt maps), so it codes the base rate bit for bit. ``ValueError`` if the windows do not allow it."""
    from lpm import zoo
    from lpm.checkpoints import save_codec
    from lpm.models import PromptedCodec, TICCodec

    model = init.model
    base = model.base if isinstance(model, PromptedCodec) else model
    if not isinstance(base, TICCodec):
        raise ValueError(f"{init.path.name} has no TIC base")
    copy = base.with_prompt_stride(stride)
    meta = {**(init.meta or {}), "base_rate": float(init.base_rate),
            "note": f"{init.path.name} with prompt_stride {base.config.prompt_stride} -> {stride} (same weights)"}
    path = folder / f"base-prompt-stride-{stride}.safetensors"
    save_codec(path, copy.eval(), meta=meta)
    return zoo.load(str(path))


def trained_parameters(model, rate: float) -> int:
    """Parameters a probe trained for ``rate``: its prompt module, its adapters, or (a separate model) all."""
    from lpm.models import LoRACodec, PromptedCodec

    if isinstance(model, LoRACodec):
        return sum(p.numel() for p in model.adapter_parameters(rate))
    if isinstance(model, PromptedCodec) and len(model.rates) > 1:
        return model.module(rate).num_parameters()
    base = model.base if isinstance(model, PromptedCodec) else model
    return sum(p.numel() for p in base.parameters())


def hidden_settings(width: int, kv: bool = True) -> dict:
    """Prompt-config overrides of the ``hidden`` probe: every Swin block's prompts come from its own tokens
    (both sides), with an additive half, at prompt stride 1 (set on the base copy); ``kv=False`` (the
    ``hidden_add`` probe): the additive half alone, no prompt keys/values."""
    return {"enc_source": "hidden", "dec_source": "hidden", "additive": True, "enc_channels": width,
            "dec_channels": width, **({} if kv else {"kv_prompts": False})}


def matched_hidden_width(base, hidden_base, model: str, kv: bool = True) -> tuple[int, int, int]:
    """The widest ``hidden`` module (on ``hidden_base``, the prompt-stride-1 copy) that holds no more
    parameters than a prompt module of the zoo config ``model`` on ``base`` (the probed base as it is):
    ``(width, its parameters, the prompt module's)``."""
    from lpm import zoo
    from lpm.models import LayerAdaptivePromptModule, PromptConfig

    named = PromptConfig.from_dict(zoo.CONFIGS.get(model, zoo.CONFIGS["tic"])["prompt"])
    target = LayerAdaptivePromptModule(base, named).num_parameters()
    base = hidden_base
    count = lambda w: LayerAdaptivePromptModule(  # noqa: E731
        base, PromptConfig.from_dict({**named.to_dict(), **hidden_settings(w, kv)})).num_parameters()
    lo, hi = 1, 1024  # the count grows with the width: bisect for the widest that fits
    if count(lo) > target:
        return lo, count(lo), target
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if count(mid) <= target else (lo, mid - 1)
    return lo, count(lo), target


def rd_cost(lmbda: float, psnr: float, bpp: float) -> float:
    """``λ·255²·MSE + bpp`` (MSE of [0, 1] images, from the PSNR), the training loss's scale."""
    mse = 10 ** (-psnr / 10)
    return lmbda * 255**2 * mse + bpp


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", metavar="JSON", help="print the Markdown table of an earlier probe's JSON and stop")
    ap.add_argument("--merge", nargs="+", metavar="JSON",
                    help="merge finished probes of one base into --json (rows of all, control shares recomputed) and stop")
    ap.add_argument("--init", help="base checkpoint (.safetensors)")
    ap.add_argument("--data-dir", help="folder holding bsds500/")
    ap.add_argument("--images", help="evaluation images (e.g. DIR/kodak)")
    ap.add_argument("--limit", type=int, default=0, help="first N evaluation images only")
    ap.add_argument("--rates", type=float, nargs="+", help="probed λ (default: one notch each side)")
    ap.add_argument("--variants", nargs="+", default=["prompts", "gain"],
                    choices=["prompts", "gain", "separate", "lora", "hidden", "hidden_add"])
    ap.add_argument("--hidden-width", type=int, default=None,
                    help="bottleneck width of the hidden probes' heads (default: the widest whose module holds no "
                         "more parameters than a prompt module of --model)")
    ap.add_argument("--lora-rank", type=int, default=7,
                    help="rank of the lora probes' adapters (default 7: at the tic config one rate's adapters hold "
                         "301,056 parameters, a prompt module 301,792; at tiny, rank 3 matches: 6,912 vs 6,960)")
    ap.add_argument("--lora-transforms", nargs="+", choices=["g_a", "h_a", "h_s", "g_s"],
                    help="transforms the lora probes adapt (default all four; e.g. g_a h_a: the encoder side only)")
    ap.add_argument("--lora-targets", nargs="+", choices=["qkv", "proj", "fc1", "fc2"],
                    help="linear layers of each Swin block the lora probes adapt (default all four; qkv proj: the "
                         "attention only, the part of a block that prompts reach; fc1 fc2: the MLP only)")
    ap.add_argument("--model", default="tic", help="zoo config whose prompt-module sizes are used")
    ap.add_argument("--prompt", action="append", default=[], metavar="KEY=VALUE",
                    help="prompt-module setting for the prompts/gain probes (PromptConfig field), repeatable")
    ap.add_argument("--prompt-stride", type=int, default=None,
                    help="probe the prompts at this prompt stride (1: one prompt token per image token and added "
                         "maps at full resolution) on a copy of the base (same weights; the base has no prompt "
                         "parameters, only the prompt-map layout changes)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--control-lr", type=float, default=1e-4, help="learning rate of the separate control")
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--device", default=None, help="training device (default: cuda if available)")
    ap.add_argument("--eval-device", default="cpu",
                    help="device of the transforms while coding the evaluation images (default cpu; cuda saves "
                         "minutes on a GPU; the entropy coding runs on the CPU either way)")
    ap.add_argument("--out-dir", default=None, help="run folders (default: results/runs/reach-probe)")
    ap.add_argument("--json", help="write the numbers here")
    args = ap.parse_args(argv)
    if args.table:
        print(markdown_table(json.loads(Path(args.table).read_text())))
        return 0
    if args.merge:
        if not args.json:
            ap.error("--merge needs --json (the merged file)")
        try:
            merged = merge([json.loads(Path(f).read_text()) for f in args.merge], [Path(f).name for f in args.merge])
        except (OSError, ValueError, KeyError, TypeError) as e:
            ap.error(f"--merge: {e}")
        from lpm.jsonio import write_json

        write_json(args.json, merged)
        print(markdown_table(merged))
        return 0
    missing = [f"--{k.replace('_', '-')}" for k in ("init", "data_dir", "images") if not getattr(args, k)]
    if missing:
        ap.error(f"the following arguments are required: {', '.join(missing)}")
    prompt_set = parse_prompt_settings(ap, args.prompt)

    from lpm import zoo
    from lpm.data import find_images
    from lpm.eval.rd import evaluate_codec
    from lpm.paths import PROJECT_ROOT
    from lpm.models.lora import LORA_TARGETS, LORA_TRANSFORMS
    from lpm.train.runner import Runner, RunConfig

    init = zoo.load(args.init)  # a bare base comes wrapped as a one-rate codec
    base_rate = float(init.base_rate)
    rates = args.rates or neighbours(base_rate, LADDER)
    images = find_images(args.images)[: args.limit or None]
    out_root = Path(args.out_dir) if args.out_dir else PROJECT_ROOT / "results" / "runs" / "reach-probe"
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"  # probes started in one second: own folders
    restrided = None
    if args.prompt_stride is not None and args.prompt_stride != init.config.prompt_stride:
        try:
            init, restrided = with_prompt_stride(init, args.prompt_stride, out_root / stamp), init
        except ValueError as e:
            ap.error(f"--prompt-stride {args.prompt_stride}: {e}")
    budget = (f"{args.steps} steps x {args.batch} crops of {args.crop}px per probe on {args.fraction:.0%} of "
              f"bsds500 (lr {args.lr:g}" + (f"; separate control lr {args.control_lr:g})" if "separate" in args.variants
                                            else ")"))
    if prompt_set:
        budget += "; prompt modules with " + ", ".join(f"{k}={v}" for k, v in prompt_set.items())
    if restrided is not None:
        budget += f"; prompt stride {args.prompt_stride} (base copy of {restrided.path.name}, same weights)"
    print(f"base {init.path.name} (λ={base_rate:g}; {init.budget_label()}); probes at λ {rates}; {budget}; "
          f"{len(images)} evaluation images", flush=True)

    from lpm.jsonio import write_json
    from lpm.provenance import environment

    dev = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    meta = {**environment(dev), "init": str(init.path), "init_sha256": init.sha256,
            "prompt_stride": init.config.prompt_stride,
            **({"restrided_from": str(restrided.path), "restrided_from_sha256": restrided.sha256} if restrided else {}),
            "init_budget": init.budget_label(), "base_rate": base_rate, "budget": budget,
            "images": args.images, "n_images": len(images), "eval_device": args.eval_device,
            "probes_planned": [[r, v] for r in rates for v in args.variants]}

    def write(rows: list[dict], complete: bool) -> None:
        """The JSON so far (after the base and after every probe: a cut run keeps what it measured)."""
        if args.json:
            write_json(args.json, {"meta": {**meta, "complete": complete},
                                   "base": {"bpp": base_bpp, "psnr": base_psnr}, "rows": rows})

    base_res = evaluate_codec(init, images, [base_rate], progress=False, device=args.eval_device)["results"]
    base_bpp, base_psnr = base_res["bpp"][0], base_res["psnr-rgb"][0]
    print(f"  base at λ={base_rate:g}: {base_bpp:.4f} bpp, {base_psnr:.2f} dB", flush=True)
    write([], False)

    rows = []
    lora = {"rank": args.lora_rank, "transforms": args.lora_transforms or list(LORA_TRANSFORMS),
            "targets": args.lora_targets or list(LORA_TARGETS)}
    hidden_init, hidden_sets = init, {}
    for variant in ("hidden", "hidden_add"):
        if variant not in args.variants:
            continue
        if hidden_init is init and init.config.prompt_stride != 1:
            hidden_init = with_prompt_stride(init, 1, out_root / stamp)
        kv = variant == "hidden"
        matched, n_matched, n_prompt = matched_hidden_width(init.model.base, hidden_init.model.base, args.model, kv)
        width = matched if args.hidden_width is None else args.hidden_width
        hidden_sets[variant] = hidden_settings(width, kv)
        parse_prompt_settings(ap, [f"{k}={v}" for k, v in hidden_sets[variant].items()])  # a bad width: usage error
        meta.setdefault("hidden", {})[variant] = {"init": str(hidden_init.path), "init_sha256": hidden_init.sha256,
                                                  "width": width, "prompt_module_parameters": n_prompt}
        print(f"  {variant} probes: width {width} on a prompt-stride-1 copy of the base (a prompt module of "
              f"{args.model} holds {n_prompt:,} parameters; width {matched} matches it with {n_matched:,})", flush=True)
    for rate in rates:
        for variant in args.variants:
            name = f"probe-{variant}-{rate:g}"
            if variant in ("prompts", "gain"):
                prompt = {"prompt": {**prompt_set, "latent_gain": variant == "gain"}}
            elif variant in hidden_sets:
                prompt = {"prompt": hidden_sets[variant]}
            else:
                prompt = {"lora": lora} if variant == "lora" else {}
            start = hidden_init if variant in hidden_sets else init
            cfg = RunConfig(
                name=name, kind={"separate": "separate", "lora": "lora"}.get(variant, "prompts"), model=args.model,
                init=str(start.path), rates=sorted([rate, base_rate]), base_rate=base_rate, **prompt,
                steps=args.steps, lr=args.control_lr if variant == "separate" else args.lr,
                lr_drops=[], checkpoint_every=max(args.steps, 1), log_every=max(1, args.steps // 10),
                out_dir=str(out_root / stamp / name),
                data={"set": "bsds500", "splits": ["train", "val", "test"], "fraction": args.fraction,
                      "crop": args.crop, "batch": args.batch},
            )
            t0 = time.time()
            (path, *_) = Runner(cfg, data_dir=args.data_dir, device=args.device, progress=False).run()
            minutes = (time.time() - t0) / 60
            ck = zoo.load(str(path))  # a separate model is a bare base: wrapped as a one-rate codec
            trained = json.loads((Path(cfg.out_dir) / "ledger.jsonl").read_text().splitlines()[-1])
            res = evaluate_codec(ck, images, [rate], progress=False, device=args.eval_device)["results"]
            bpp, psnr = res["bpp"][0], res["psnr-rgb"][0]
            row = {
                "rate": rate, "variant": variant, "bpp": bpp, "psnr": psnr,
                "bpp_change_vs_base_rate": bpp / base_bpp - 1, "psnr_change_db": psnr - base_psnr,
                "rd_cost": rd_cost(rate, psnr, bpp), "rd_cost_base_alone": rd_cost(rate, base_psnr, base_bpp),
                "train_minutes": minutes, "checkpoint": str(path), "budget": ck.budget, "lr": cfg.lr,
                "images_seen": trained["images_seen"], "images_in_set": trained["images_in_set"],
                "prompt_settings": prompt_set if variant in ("prompts", "gain") else hidden_sets.get(variant, {}),
                "prompt_stride": start.config.prompt_stride, "trained_parameters": trained_parameters(ck.model, rate),
                **({"lora_rank": args.lora_rank, "lora_transforms": lora["transforms"], "lora_targets": lora["targets"]}
                   if variant == "lora" else {}),
                "training_log": training_log(Path(cfg.out_dir) / "log.csv"),
            }
            rows.append(row)
            print(f"  λ={rate:g} {variant:8s}: {bpp:.4f} bpp ({100 * row['bpp_change_vs_base_rate']:+.1f} % vs base "
                  f"rate), {psnr:.2f} dB ({row['psnr_change_db']:+.2f}); RD cost at this λ {row['rd_cost']:.4f} vs "
                  f"{row['rd_cost_base_alone']:.4f} for the base alone; {minutes:.1f} min", flush=True)
            write(against_control(rows), False)
    rows = against_control(rows)
    if any(r["variant"] == "separate" for r in rows):
        for r in rows:
            if r["variant"] != "separate" and r["reach_share"] is not None:
                print(f"  λ={r['rate']:g} {r['variant']:8s}: {100 * r['reach_share']:.0f} % of the control's bpp change, "
                      f"{100 * (r['rd_gain_share'] or 0):.0f} % of its RD-cost gain", flush=True)
    write(rows, True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
