"""What deterministic entropy tables and thread-invariant decoding cost (issue 11), measured in one process.

Times, interleaved (A, B, A, B, ... so that a busy machine slows both alike), per image:

* encode: ``compress`` as shipped (tables from float64 CPU copies of the hyper-synthesis and its prompt nets,
  plus the table check) vs the float32 tables of format version 1;
* decode: ``decompress`` as shipped (float64 tables, table check, thread-invariant synthesis on the CPU:
  oneDNN off, :class:`lpm.layers.deconv.Deconv` as fixed-order matrix products) vs format version 1's way
  (float32 tables, oneDNN convolutions), and each of the two changes alone.

    python bench/determinism_cost.py --image ../shared/data/kodak/kodim01.png --threads 1 --repeat 5
    python bench/determinism_cost.py --model tiny-smoke --image ... --json results/bench/determinism_cost.json

``--model default`` (the default) is the paper-size codec with random weights (speed does not depend on the
weights except through the entropy coder); ``--model tiny-smoke`` the shipped smoke checkpoint.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Callable

import torch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", help="image to code (default: random 512x768)")
    ap.add_argument("--model", default="default", help="'default' (paper size, random weights) or a zoo name")
    ap.add_argument("--rate", type=float, help="λ (default: the smallest, a prompted rate)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="also write the numbers here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    import lpm.models.base as B
    from lpm import zoo
    from lpm.models import PromptedCodec, TICCodec

    if args.model == "default":
        torch.manual_seed(0)
        model = PromptedCodec(TICCodec()).eval()
        model.update(force=True)
    else:
        model = zoo.load(args.model).model
    if args.image:
        from lpm.data import read_image

        x = read_image(args.image)[0][None]
    else:
        x = torch.rand(1, 3, 512, 768)
    rate = args.rate if args.rate is not None else model.rates[0]
    base, src = model.backbone(rate), model.prompt_source(rate, 1)
    gc = base.gaussian_conditional

    def encode(exact: bool) -> Callable[[], dict]:
        def run() -> dict:
            if exact:
                return model.compress(x, rate)
            with torch.no_grad():  # format version 1's compress: float32 tables on the model's device
                y, z = base._analysis(base.pad(x), src)
                zs = base.entropy_bottleneck.compress(z)
                z_hat = base.entropy_bottleneck.decompress(zs, z.shape[-2:])
                idx, means = base.entropy_tables(z_hat, src, exact=False)
                return {"strings": [gc.compress(y, idx, means=means), zs], "shape": tuple(z.shape[-2:])}
        return run

    c_exact, c_f32 = encode(True)(), encode(False)()

    def decode(exact: bool, invariant: bool) -> Callable[[], object]:
        c = c_exact if exact else c_f32

        def run() -> object:
            B.THREAD_INVARIANT_SYNTHESIS = invariant
            try:
                return model.decompress(c["strings"], c["shape"], rate,
                                        table_checks=c.get("table_checks"), exact=exact)
            finally:
                B.THREAD_INVARIANT_SYNTHESIS = True
        return run

    variants = {
        "encode, version 1 (float32 tables)": encode(False),
        "encode, shipped (float64 CPU tables + check)": encode(True),
        "decode, version 1 (float32 tables, oneDNN convs)": decode(False, False),
        "decode, float64 tables only": decode(True, False),
        "decode, thread-invariant synthesis only": decode(False, True),
        "decode, shipped (float64 tables + check, invariant)": decode(True, True),
    }
    for fn in variants.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.repeat):
        for name, fn in variants.items():
            t0 = time.process_time()
            fn()
            times[name].append(time.process_time() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    enc0, dec0 = med["encode, version 1 (float32 tables)"], med["decode, version 1 (float32 tables, oneDNN convs)"]
    print(f"model {args.model}, image {tuple(x.shape[-2:])}, rate {rate:g}, threads {torch.get_num_threads()}, "
          f"torch {torch.__version__}; CPU seconds, median of {args.repeat} interleaved runs")
    rows = []
    for name, m in med.items():
        ref = enc0 if name.startswith("encode") else dec0
        rows.append({"variant": name, "cpu_s_median": m, "cpu_s_min": min(times[name]), "vs_version_1": m / ref})
        print(f"  {name:55s} {m:8.3f} s  (min {min(times[name]):.3f})  {100 * (m / ref - 1):+6.1f} %")
    if args.json:
        meta = {"model": args.model, "image": args.image or "random 512x768", "rate": rate,
                "threads": torch.get_num_threads(), "repeat": args.repeat, "torch": torch.__version__,
                "machine": platform.processor() or platform.machine(), "clock": "process CPU time"}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
