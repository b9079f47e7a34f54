"""Multi-process smoke check: run a training config under torchrun and record each rank's final weights.

    python -m torch.distributed.run --nproc_per_node=2 -m lpm.train.ddp_check CONFIG.yaml OUT_DIR [STOP_AT|resume]

Each rank writes ``OUT_DIR/rank<r>.sha`` (sha256 over its final model's tensors); equal files mean the ranks
stayed in sync (gradients all-reduced, identical optimizer steps). Each rank also appends one line per step to
``OUT_DIR/rank<r>.crops`` (sha256 of the crops it drew), so that a run stopped and resumed can be compared
with one never stopped, rank by rank. ``STOP_AT`` (a step count) stops every rank at that step of the first
stage, saving the state as a signal would; ``resume`` resumes from it. Works with gloo on CPUs and NCCL on
GPUs. The run itself goes to ``OUT_DIR/run`` (not the config's ``out_dir``), so checking a config of
``configs/`` writes nothing into the project; it trains the config's steps, so give it a short one.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from lpm.train.runner import Runner, load_config
from lpm.train.sampler import CropSampler


def main(argv: list[str]) -> int:
    config, out = argv[0], Path(argv[1])
    mode = argv[2] if len(argv) > 2 else ""
    device = None if torch.cuda.is_available() else "cpu"
    runner = Runner(load_config(config, out_dir=str(out / "run")), device=device, progress=False)
    out.mkdir(parents=True, exist_ok=True)
    crops = open(out / f"rank{runner.rank}.crops", "a")
    real_next = CropSampler.next

    def recorded_next(self):
        batch = real_next(self)
        crops.write(hashlib.sha256(batch.detach().cpu().contiguous().numpy().tobytes()).hexdigest() + "\n")
        return batch

    CropSampler.next = recorded_next
    if mode.isdigit():  # every rank decides alike, at the same step: no all-reduce needed
        stop_at = int(mode)
        runner._should_stop = lambda step: step == stop_at  # type: ignore[method-assign]
    try:
        runner.run(resume=mode == "resume")
    finally:
        CropSampler.next = real_next
        crops.close()
    h = hashlib.sha256()
    for k, v in sorted(runner.stages[-1].model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    (out / f"rank{runner.rank}.sha").write_text(h.hexdigest())
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
