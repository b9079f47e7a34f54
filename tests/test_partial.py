"""Partial checkpoints and --continue-from: a run carried across machines that keep nothing (issue 9)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from lpm.checkpoints import file_sha256, load_codec, read_metadata, save_codec
from lpm.cli import main
from lpm.train.partial import PARTIAL_FILE, Restart, restart_seed, warmup_factor
from lpm.train.runner import Runner, RunConfig
from lpm.train.state import TrainingStateError

from conftest import write_fake_bsds500

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A fake 'bsds500' layout with 12 small smooth images."""
    root = tmp_path_factory.mktemp("data")
    write_fake_bsds500(root, {"train": 8, "val": 4}, seed=1)
    return root


def _cfg(out: Path, data_dir: Path, **kw) -> RunConfig:
    base = dict(name="t", kind="base", model="tiny", steps=6, lr=1e-3, checkpoint_every=3, log_every=1,
                restart_warmup=2, lr_drops=[], out_dir=str(out),
                data={"dir": str(data_dir), "crop": 32, "batch": 2, "on_device": False})
    base.update(kw)
    return RunConfig(**base)


def _stop_at(monkeypatch, step: int, stage: str | None = None) -> None:
    """Make the run stop cleanly (as max_minutes would) when it reaches ``step`` (of ``stage``)."""
    def should_stop(self, s):
        return s == step and (stage is None or (self._live and self._live[0] == stage))

    monkeypatch.setattr(Runner, "_should_stop", should_stop)


def _log(out: Path) -> list[dict]:
    with open(out / "log.csv") as f:
        return list(csv.DictReader(f))


def _ledger(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "ledger.jsonl").read_text().splitlines()]


@pytest.fixture
def stopped_base(tmp_path, data_dir, monkeypatch) -> Path:
    out = tmp_path / "a"
    _stop_at(monkeypatch, 3)
    assert Runner(_cfg(out, data_dir), progress=False).run() == []
    monkeypatch.undo()
    return out


def test_a_clean_stop_writes_a_half_precision_partial_checkpoint(stopped_base):
    part = stopped_base / PARTIAL_FILE
    assert part.exists() and (stopped_base / "state.pt").exists()
    with safe_open(str(part), "pt") as f:
        dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes["g_a.layers.0.weight"] == "F16"
    assert all(d in ("F16", "I64", "I32") for k, d in dtypes.items() if "entropy_bottleneck" not in k and "gaussian" not in k)
    assert all(d in ("F32", "I32") for k, d in dtypes.items() if "entropy_bottleneck" in k or "gaussian" in k)
    ck = load_codec(part)  # a valid codec checkpoint: lpm eval can measure it
    assert ck.kind == "tic" and "stopped at step 3 of 6 in stage base" in ck.budget
    p = ck.meta["partial"]
    assert (p["run"], p["kind"], p["stage"], p["stage_name"], p["step"], p["restarts"]) == ("t", "base", 0, "base", 3, [])


def test_continue_from_picks_up_with_fresh_optimizer_warmup_and_honest_ledger(tmp_path, data_dir, stopped_base):
    part = stopped_base / PARTIAL_FILE
    out = tmp_path / "b"
    written = Runner(_cfg(out, data_dir, continue_from=str(part)), progress=False).run()
    assert [p.name for p in written] == ["model.safetensors"]
    rows = _log(out)
    assert [int(r["step"]) for r in rows] == [4, 5, 6]  # the step counter continues
    lrs = [float(r["lr"]) for r in rows]
    assert lrs[0] == pytest.approx(0.5e-3) and lrs[1] == pytest.approx(1e-3)  # 2-step ramp after step 3
    (rec,) = _ledger(out)
    assert rec["crops_seen"] == 12 and rec["steps"] == 6
    assert rec["restarts"] == [{"at_step": 3, "from_sha256": file_sha256(part), "optimizer": "fresh",
                                "warmup_steps": 2}]
    ck = load_codec(written[0])
    assert "continued 1x from half-precision weights with a fresh optimizer" in ck.budget
    assert ck.meta["ledger"][0]["restarts"][0]["at_step"] == 3
    assert not (out / PARTIAL_FILE).exists()  # the run went past its stop


def test_continued_weights_are_the_partial_ones(tmp_path, data_dir, stopped_base):
    """With the learning rates at 0 the continued run ends on exactly the partial file's weights."""
    part = stopped_base / PARTIAL_FILE
    out = tmp_path / "c"
    (w,) = Runner(_cfg(out, data_dir, continue_from=str(part), lr=0.0, aux_lr=0.0), progress=False).run()
    got, want = load_codec(w).model.state_dict(), load_codec(part).model.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_a_continued_run_that_stops_again_chains_its_restarts(tmp_path, data_dir, stopped_base, monkeypatch):
    out = tmp_path / "d"
    _stop_at(monkeypatch, 5)
    Runner(_cfg(out, data_dir, continue_from=str(stopped_base / PARTIAL_FILE)), progress=False).run()
    monkeypatch.undo()
    p = load_codec(out / PARTIAL_FILE).meta["partial"]
    assert p["step"] == 5 and [r["at_step"] for r in p["restarts"]] == [3]
    # same machine: --resume of the continued run works as always
    Runner(_cfg(out, data_dir, continue_from=str(stopped_base / PARTIAL_FILE)), progress=False).run(resume=True)
    assert [int(r["step"]) for r in _log(out)][-1] == 6
    # another machine: continue from the second partial
    out2 = tmp_path / "e"
    _stop_at(monkeypatch, 5)
    Runner(_cfg(tmp_path / "d2", data_dir, continue_from=str(stopped_base / PARTIAL_FILE)), progress=False).run()
    monkeypatch.undo()
    Runner(_cfg(out2, data_dir, continue_from=str(tmp_path / "d2" / PARTIAL_FILE)), progress=False).run()
    (rec,) = _ledger(out2)
    assert [r["at_step"] for r in rec["restarts"]] == [3, 5]
    assert "continued 2x" in load_codec(out2 / "model.safetensors").budget


def test_progressive_prompts_continue_in_the_cut_stage_and_keep_the_exact_base(tmp_path, data_dir, monkeypatch):
    base_dir = tmp_path / "base"
    Runner(_cfg(base_dir, data_dir, steps=2), progress=False).run()
    init = base_dir / "model.safetensors"
    kw = dict(kind="prompts", init=str(init), rates=[0.0067, 0.013, 0.0483], steps=3,
              data={"dir": str(data_dir), "crop": 32, "batch": 2, "on_device": False, "fraction": 0.5})
    _stop_at(monkeypatch, 2, stage="prompt-0.0067")
    Runner(_cfg(tmp_path / "p1", data_dir, **kw), progress=False).run()
    monkeypatch.undo()
    part = tmp_path / "p1" / PARTIAL_FILE
    assert load_codec(part).meta["partial"]["stage_name"] == "prompt-0.0067"
    out = tmp_path / "p2"
    written = Runner(_cfg(out, data_dir, continue_from=str(part), **kw), progress=False).run()
    assert [p.name for p in written] == ["model.safetensors"]
    w = written[0]
    assert [(r["stage"], int(r["step"])) for r in _log(out)] == [("prompt-0.0067", 3)]
    assert [r["model"] for r in _ledger(out)] == ["prompt-0.013", "prompt-0.0067"]  # finished stage carried over
    model, base = load_codec(w).model, load_codec(init).model
    # the frozen base is the init's, bit for bit (not the partial file's half-precision copy)
    assert all(torch.equal(v, model.base.state_dict()[k]) for k, v in base.state_dict().items())
    # the finished stage's module is the partial file's
    pm = load_codec(part).model
    assert all(torch.equal(v, model.module(0.013).state_dict()[k]) for k, v in pm.module(0.013).state_dict().items())


def test_foreign_or_mismatched_partials_are_refused_before_anything_is_written(tmp_path, data_dir, stopped_base):
    part = stopped_base / PARTIAL_FILE
    cases = {
        "other run name": (dict(name="other"), part, "belongs to the 'base' run 't'"),
        "finished model": (dict(), None, "not a partial checkpoint"),
        "fewer steps": (dict(steps=3), part, "step 3 is not inside a stage of 3 steps"),
        "not a checkpoint": (dict(), tmp_path / "junk.safetensors", "cannot continue from this file"),
    }
    finished = tmp_path / "fin.safetensors"
    save_codec(finished, load_codec(part).model, meta={"base_rate": 0.0483})
    (tmp_path / "junk.safetensors").write_bytes(b"\0" * 64)
    for name, (kw, path, msg) in cases.items():
        out = tmp_path / f"x-{name.replace(' ', '-')}"
        cfg = _cfg(out, data_dir, continue_from=str(path or finished), **kw)
        with pytest.raises(TrainingStateError, match=msg):
            Runner(cfg, progress=False).run()
        assert not (out / "run").exists(), name  # the refused run's new out_dir is not left behind, even empty


def test_a_partial_from_another_init_is_refused(tmp_path, data_dir, stopped_base):
    other = tmp_path / "other-init.safetensors"
    save_codec(other, load_codec(stopped_base / PARTIAL_FILE).model, meta={"base_rate": 0.0483})
    cfg = _cfg(tmp_path / "y", data_dir, init=str(other), continue_from=str(stopped_base / PARTIAL_FILE))
    with pytest.raises(TrainingStateError, match="trained from init"):
        Runner(cfg, progress=False).run()


def test_warmup_factor_ramps_linearly_after_the_restart_step_only():
    r = Restart(Path("p"), "0" * 64, 0, "base", 10, 1.0, 0.0, restarts=[{"at_step": 10}], warmup=4)
    assert [warmup_factor(s, r) for s in (9, 10, 11, 12, 13, 14, 15)] == [1.0, 1.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert warmup_factor(11, None) == 1.0
    assert warmup_factor(11, Restart(Path("p"), "0" * 64, 0, "base", 10, 1.0, 0.0, warmup=0)) == 1.0
    assert restart_seed(7, None) == 7 and restart_seed(7, r) != 7


def test_cli_continue_from(tmp_path, data_dir, stopped_base, capsys):
    cfg = {"name": "t", "kind": "base", "model": "tiny", "steps": 6, "log_every": 1, "restart_warmup": 2,
           "data": {"dir": str(data_dir), "crop": 32, "batch": 2, "on_device": False}}
    path = tmp_path / "c.yaml"
    import yaml

    path.write_text(yaml.safe_dump(cfg))
    rc = main(["train", str(path), "--out-dir", str(tmp_path / "cli"), "--no-progress",
               "--continue-from", str(stopped_base / PARTIAL_FILE), "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 0 and "continuing stage base at step 3 of 6" in out and "continued 1x" in out
    rc = main(["train", str(path), "--out-dir", str(tmp_path / "cli2"), "--no-progress",
               "--continue-from", str(tmp_path / "missing.safetensors"), "--device", "cpu"])
    assert rc == 2 and "missing.safetensors" in capsys.readouterr().err
    assert read_metadata(stopped_base / PARTIAL_FILE)["kind"] == "tic"


def test_a_state_saved_before_the_continue_fields_existed_still_resumes(tmp_path, data_dir, stopped_base):
    """Runs stopped by an older lpm (no continue_from / restart_warmup / partial_half in the saved config)."""
    path = stopped_base / "state.pt"
    state = torch.load(path, weights_only=True)
    saved = json.loads(state["config"])
    for key in ("continue_from", "restart_warmup", "partial_half"):
        saved.pop(key)
    state["config"] = json.dumps(saved)
    torch.save(state, path)
    cfg = _cfg(stopped_base, data_dir, restart_warmup=100)  # the default: what the old run used
    assert [p.name for p in Runner(cfg, progress=False).run(resume=True)] == ["model.safetensors"]


def _repartial(src: Path, dst: Path, **changes) -> dict:
    """``src`` saved again with its ``partial`` record changed (as if that part had run elsewhere)."""
    ck = load_codec(src)
    meta = dict(ck.meta)
    meta["partial"] = {**meta["partial"], **changes}
    save_codec(dst, ck.model, meta=meta, half=True)
    return meta["partial"]


@pytest.mark.parametrize("ledger", [
    [{}],
    [{"gpu_minutes": "1", "cpu_minutes": 0.0, "crops_seen": 8}],
    [{"gpu_minutes": 0.0, "cpu_minutes": 1.0, "crops_seen": 8, "restarts": 5}],
], ids=["empty-record", "minutes-as-string", "restarts-not-a-list"])
def test_partials_with_broken_ledger_records_are_refused_before_anything_is_written(tmp_path, data_dir,
                                                                                     stopped_base, ledger):
    """Such records used to pass, train the whole stage, then fail adding the budget up (a TypeError or
    ``lpm: error: gpu_minutes``), leaving an out_dir that could neither resume nor be continued into."""
    ck = load_codec(stopped_base / PARTIAL_FILE)
    save_codec(tmp_path / "bad.safetensors", ck.model, meta={**ck.meta, "ledger": ledger}, half=True)
    out = tmp_path / "never"
    with pytest.raises(TrainingStateError, match="ledger, finished list or restarts are not valid"):
        Runner(_cfg(out, data_dir, continue_from=str(tmp_path / "bad.safetensors")), progress=False).run()
    assert not out.exists() or not any(out.iterdir())


def test_a_stage_continued_on_another_kind_of_device_books_each_part_by_its_device(tmp_path, data_dir, stopped_base):
    """The first 3 steps claim to have run on a GPU (the partial's GPU clock), the last 3 run here on the CPU:
    the ledger books both, and the budget line names both."""
    p = load_codec(stopped_base / PARTIAL_FILE).meta["partial"]
    assert p["gpu_elapsed"] == 0.0 and p["stage_gpu_start"] == 0.0 and p["elapsed"] > 0  # a CPU run says so
    gpu_part = _repartial(stopped_base / PARTIAL_FILE, tmp_path / "from-gpu.safetensors",
                          gpu_elapsed=p["elapsed"], stage_gpu_start=p["stage_start"])
    out = tmp_path / "b"
    (model_path,) = Runner(_cfg(out, data_dir, continue_from=str(tmp_path / "from-gpu.safetensors")),
                           progress=False).run()
    (rec,) = _ledger(out)
    assert rec["gpu_minutes"] == pytest.approx((gpu_part["elapsed"] - gpu_part["stage_start"]) / 60)
    assert rec["cpu_minutes"] > 0
    budget = load_codec(model_path).budget
    assert f"{rec['gpu_minutes']:.2f} GPU-minutes + {rec['cpu_minutes']:.2f} CPU-minutes" in budget


def test_partials_without_gpu_clocks_continue_and_bad_gpu_clocks_are_refused(tmp_path, data_dir, stopped_base):
    ck = load_codec(stopped_base / PARTIAL_FILE)
    old = dict(ck.meta)
    old["partial"] = {k: v for k, v in old["partial"].items() if k not in ("gpu_elapsed", "stage_gpu_start")}
    save_codec(tmp_path / "old.safetensors", ck.model, meta=old, half=True)
    Runner(_cfg(tmp_path / "o", data_dir, continue_from=str(tmp_path / "old.safetensors")), progress=False).run()
    (rec,) = _ledger(tmp_path / "o")
    assert rec["gpu_minutes"] == 0.0 and rec["cpu_minutes"] > 0  # an old file: all on this (CPU) device
    elapsed, refused = ck.meta["partial"]["elapsed"], 0
    for bad in (dict(gpu_elapsed=elapsed + 1.0), dict(gpu_elapsed=-1.0), dict(stage_gpu_start=elapsed + 5),
                dict(gpu_elapsed="1"), dict(gpu_elapsed=float("nan"))):
        try:
            _repartial(stopped_base / PARTIAL_FILE, tmp_path / "bad.safetensors", **bad)
        except ValueError:  # NaN does not even make it into the JSON metadata
            continue
        out = tmp_path / "never"
        with pytest.raises(TrainingStateError, match="GPU clocks"):
            Runner(_cfg(out, data_dir, continue_from=str(tmp_path / "bad.safetensors")), progress=False).run()
        assert not out.exists() or not any(out.iterdir()), bad
        refused += 1
    assert refused >= 4


def test_training_states_carry_the_gpu_clock_and_older_ones_still_resume(tmp_path, data_dir, stopped_base):
    path = stopped_base / "state.pt"
    state = torch.load(path, weights_only=True)
    assert state["gpu_elapsed"] == 0.0 and state["stage_gpu_start"] == 0.0
    bad = {**state, "gpu_elapsed": state["elapsed"] + 10.0}
    torch.save(bad, path)
    with pytest.raises(TrainingStateError, match="GPU clocks"):
        Runner(_cfg(stopped_base, data_dir), progress=False).run(resume=True)
    del state["gpu_elapsed"], state["stage_gpu_start"]
    torch.save(state, path)
    assert [p.name for p in Runner(_cfg(stopped_base, data_dir), progress=False).run(resume=True)] == ["model.safetensors"]
    (rec,) = _ledger(stopped_base)
    assert rec["gpu_minutes"] == 0.0 and rec["cpu_minutes"] > 0


def test_a_continued_run_resumes_after_its_source_partial_is_gone(tmp_path, data_dir, stopped_base, monkeypatch):
    """A continued run stopped again resumed only while the partial it started from was still there (the
    case partials are for: the machine that had it kept nothing); its state now holds that record. The resumed
    run ends as one never stopped after continuing."""
    part = tmp_path / "from-elsewhere.safetensors"
    shutil.copy(stopped_base / PARTIAL_FILE, part)
    ref = Runner(_cfg(tmp_path / "ref", data_dir, continue_from=str(part)), progress=False).run()
    out = tmp_path / "b"
    _stop_at(monkeypatch, 5)
    Runner(_cfg(out, data_dir, continue_from=str(part)), progress=False).run()
    monkeypatch.undo()
    part.unlink()
    (w,) = Runner(_cfg(out, data_dir, continue_from=str(part)), progress=False).run(resume=True)
    got, want = load_codec(w).model.state_dict(), load_codec(ref[0]).model.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)
    (rec,) = _ledger(out)
    assert [r["at_step"] for r in rec["restarts"]] == [3] and rec["steps"] == 6


def test_resuming_without_a_finished_stages_model_file_is_refused(tmp_path, data_dir, monkeypatch):
    """The file of a finished stage was lost: --resume trained the rest, exited 0 and printed 'wrote' for it."""
    base = tmp_path / "base"
    Runner(_cfg(base, data_dir, steps=2), progress=False).run()
    out = tmp_path / "sep"
    cfg = _cfg(out, data_dir, kind="separate", init=str(base / "model.safetensors"), rates=[0.0067, 0.0483],
               base_rate=0.0483, steps=4, checkpoint_every=2, log_every=2)
    monkeypatch.setattr(Runner, "_should_stop", lambda self, s: (self._live_index, s) == (1, 2))
    Runner(cfg, progress=False).run()
    monkeypatch.undo()
    (first,) = out.glob("model-0.0067*.safetensors")
    first.unlink()
    with pytest.raises(TrainingStateError, match="model file of a finished stage is missing"):
        Runner(cfg, progress=False).run(resume=True)


def test_a_continued_stage_draws_new_quantisation_noise(tmp_path, data_dir, stopped_base, monkeypatch):
    """--continue-from reseeded the crops but not torch's generator: the noise of the run's first steps again."""
    from lpm.train.sampler import CropSampler

    seeds, real_next = [], CropSampler.next

    def next_(self):
        seeds.append(torch.initial_seed())
        return real_next(self)

    monkeypatch.setattr(CropSampler, "next", next_)
    Runner(_cfg(tmp_path / "b", data_dir, continue_from=str(stopped_base / PARTIAL_FILE)), progress=False).run()
    assert len(seeds) == 3 and len(set(seeds)) == 1 and seeds[0] != 0  # config seed 0: a new stream
