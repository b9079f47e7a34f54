"""``lpm train`` hardening (issue 10): a bad ``state.pt`` is one line and exit 2 with nothing changed, and
SIGTERM / Ctrl-C save the state, say where it is and how to resume, print the real budget and exit 143 / 130."""

from __future__ import annotations

import fractions
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from test_runner import _cfg, _log, data_dir  # noqa: F401 -- the fake bsds500 fixture and tiny run configs

from lpm.cli import main
from lpm.checkpoints import load_codec
from lpm.train.runner import Runner, TrainingStateError, load_config
from lpm.train.sampler import CropSampler

pytestmark = pytest.mark.usefixtures("torch_single_thread")


class _Killed(Exception):
    pass


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>" for p in sorted(folder.rglob("*"))}


def _write_config(tmp_path: Path, data_folder: Path, out: Path, **kw) -> Path:
    cfg = {"name": "safe", "kind": "base", "model": "tiny", "steps": 6, "lr": 1e-3, "log_every": 1,
           "checkpoint_every": 3, "out_dir": str(out),
           "data": {"dir": str(data_folder), "crop": 32, "batch": 2, "on_device": False}, **kw}
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _kill_in_step(config: Path, step: int) -> None:
    """Run ``config`` and kill it (an exception, nothing saved on the way out) when it draws the crops of ``step``."""
    with pytest.MonkeyPatch.context() as mp:
        _die_at_crop(mp, step)
        with pytest.raises(_Killed):
            Runner(load_config(config), device="cpu", progress=False).run()


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory, data_dir) -> tuple[Path, Path]:  # noqa: F811
    """A run killed in step 5 (last state: step 3, with optimizer state): ``(config file, out_dir)``."""
    root = tmp_path_factory.mktemp("killed")
    out = root / "run"
    config = _write_config(root, data_dir, out)
    _kill_in_step(config, 5)
    state = torch.load(out / "state.pt", weights_only=True)
    assert state["step"] == 3 and state["optimizer"]["state"]
    return config, out


def _edit_state(path: Path, **changes) -> None:
    state = torch.load(path, weights_only=True)
    for k, v in changes.items():
        state[k] = v(state) if callable(v) else v
    torch.save(state, path)


def _bad_model(state: dict) -> dict:
    return {k: torch.zeros(3) for k in state["model"]}


def _bad_optimizer(state: dict) -> dict:
    opt = state["optimizer"]
    first = next(iter(opt["state"]))
    opt["state"][first]["exp_avg"] = torch.zeros(7, 7)
    return opt


BAD_STATES = {
    "empty": lambda p: p.write_bytes(b""),
    "garbage": lambda p: p.write_bytes(os.urandom(4096)),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "foreign-dict": lambda p: torch.save({"weights": torch.zeros(3)}, p),
    "foreign-list": lambda p: torch.save([1, 2, 3], p),
    "unsafe-pickle": lambda p: torch.save({"format": 1, "x": fractions.Fraction(1, 3)}, p),
    "other-format": lambda p: _edit_state(p, format=99),
    "step-out-of-range": lambda p: _edit_state(p, step=10**6),
    "step-as-string": lambda p: _edit_state(p, step="3"),
    "nan-elapsed": lambda p: _edit_state(p, elapsed=float("nan")),
    "ledger-not-json": lambda p: _edit_state(p, ledger="[{"),
    # records that used to pass, train a whole stage, then crash adding them up (TypeError) with out_dir half written
    "ledger-restarts-not-a-list": lambda p: _edit_state(p, ledger=json.dumps(
        [{"gpu_minutes": 0.0, "cpu_minutes": 1.0, "crops_seen": 8, "restarts": 5}])),
    "ledger-steps-as-string": lambda p: _edit_state(p, ledger=json.dumps(
        [{"gpu_minutes": 0.0, "cpu_minutes": 1.0, "crops_seen": 8, "steps": "3"}])),
    "model-of-another-run": lambda p: _edit_state(p, model=_bad_model),
    "optimizer-of-another-run": lambda p: _edit_state(p, optimizer=_bad_optimizer),
    "rng-garbage": lambda p: _edit_state(p, torch_rng=torch.zeros(3, dtype=torch.uint8)),
    "directory": lambda p: (p.unlink(), p.mkdir()),
    # torch.load does not check the zip's CRCs: one changed byte of a weight used to load as another weight
    "bit-flip-in-a-tensor": lambda p: _flip_in_member(p, "/data/0"),
    "junk-appended": lambda p: p.write_bytes(p.read_bytes() + os.urandom(70000)),
    # a field no state has used to load and be ignored: 2 GiB of zeros in it made a 2 MB file a memory bomb
    "unknown-field": lambda p: _edit_state(p, pad=torch.zeros(4)),
    "deflated-zeros": lambda p: _deflate(p, extra=torch.zeros(1 << 24)),  # 64 MiB of zeros in ~70 kB
}


def _deflate(path: Path, extra: torch.Tensor) -> None:
    """Re-zip a state with DEFLATE, CRCs recomputed (torch.load inflates such members without a word)."""
    import zipfile

    _edit_state(path, pad=extra)
    raw = path.with_suffix(".stored")
    path.rename(raw)
    with zipfile.ZipFile(raw) as zi, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zo:
        for info in zi.infolist():
            zo.writestr(info.filename, zi.read(info))
    raw.unlink()
    assert path.stat().st_size < 2 << 20


def test_a_compressed_state_is_refused_before_torch_load_inflates_it(tmp_path, killed_run, monkeypatch):
    from lpm.train import state as state_mod
    from lpm.train.state import TrainingStateError

    config, src = killed_run
    path = tmp_path / "state.pt"
    shutil.copyfile(src / "state.pt", path)
    _deflate(path, extra=torch.zeros(1 << 24))
    monkeypatch.setattr(state_mod.torch, "load", lambda *a, **k: pytest.fail("torch.load was reached"))
    with pytest.raises(TrainingStateError, match="is compressed, which torch.save never writes"):
        state_mod.read_state(path, load_config(config))


def _flip_in_member(path: Path, suffix: str) -> None:
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(suffix))
    raw = bytearray(path.read_bytes())
    name_len, extra_len = int.from_bytes(raw[info.header_offset + 26:info.header_offset + 28], "little"), \
        int.from_bytes(raw[info.header_offset + 28:info.header_offset + 30], "little")
    raw[info.header_offset + 30 + name_len + extra_len + 1] ^= 0x01  # the data's second byte, CRC left as it was
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("name", sorted(BAD_STATES))
def test_bad_state_is_one_line_exit_2_and_changes_nothing(tmp_path, killed_run, capsys, name):
    config, src = killed_run
    out = tmp_path / "run"
    shutil.copytree(src, out)
    BAD_STATES[name](out / "state.pt")
    before = _snapshot(out)
    rc = main(["train", str(config), "--resume", "--out-dir", str(out), "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lpm: error: ") and str(out / "state.pt") in lines[0], err
    assert "Traceback" not in err
    assert _snapshot(out) == before


def test_fresh_runs_never_overwrite_a_runs_outputs(tmp_path, killed_run):
    config, src = killed_run
    out = tmp_path / "run"
    shutil.copytree(src, out)
    (out / "model.safetensors").write_bytes(b"a checkpoint the user wants to keep")
    from lpm.train.runner import load_config

    cfg = load_config(config, out_dir=str(out))
    (out / "state.pt").unlink()
    before = _snapshot(out)
    for resume in (False, True):  # no state.pt: a fresh start would overwrite model.safetensors
        with pytest.raises(TrainingStateError, match="already holds a run"):
            Runner(cfg, device="cpu", progress=False).run(resume=resume)
    assert _snapshot(out) == before


def test_sigterm_saves_state_passes_the_signal_on_and_resumes_exactly(
    tmp_path, data_dir, monkeypatch, capsys  # noqa: F811
):
    """In process: the run stops at the step boundary after the signal, saves, prints where and how to resume
    and the real budget, then calls the handler that was installed before (here one that raises)."""
    ref = Runner(_cfg(tmp_path, data_dir, out_dir=str(tmp_path / "ref")), progress=False)
    ref.run()
    ref_log = _log(tmp_path / "ref")

    class Previous(Exception):
        pass

    def previous(signum, frame):
        raise Previous(signum)

    real_next, calls = CropSampler.next, {"n": 0}

    def next_then_sigterm(self):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_next(self)

    out = tmp_path / "run"
    monkeypatch.setattr(CropSampler, "next", next_then_sigterm)
    old = signal.signal(signal.SIGTERM, previous)
    try:
        with pytest.raises(Previous):
            Runner(_cfg(tmp_path, data_dir), progress=False).run()
        assert signal.getsignal(signal.SIGTERM) is previous  # restored
    finally:
        signal.signal(signal.SIGTERM, old)
    monkeypatch.setattr(CropSampler, "next", real_next)
    captured = capsys.readouterr()
    state = torch.load(out / "state.pt", weights_only=True)
    assert state["step"] == 3  # the step in flight when the signal came was finished, then the run stopped
    assert "interrupted by SIGTERM at step 3 of 6" in captured.err and str(out / "state.pt") in captured.err
    assert f"lpm train {out / 'config.yaml'} --resume" in captured.err
    assert "6 crops of 32px" in captured.out and "stopped at step 3 of 6" in captured.out  # 3 steps x batch 2
    assert not (out / "model.safetensors").exists()

    written = Runner(_cfg(tmp_path, data_dir), progress=False).run(resume=True)
    assert [p.name for p in written] == ["model.safetensors"]
    got = _log(out)
    assert [r["loss"] for r in got[-3:]] == [r["loss"] for r in ref_log[3:]]
    w = load_codec(written[0]).model.state_dict()
    ref_w = load_codec(tmp_path / "ref" / "model.safetensors").model.state_dict()
    assert all(torch.equal(w[k], ref_w[k]) for k in ref_w)


@pytest.mark.parametrize("sig_name, handler", [
    # a process started in the background by a shell without job control inherits SIGINT ignored, and the
    # runner rightly leaves an ignored signal ignored: give this test the Ctrl-C handler of a terminal
    ("SIGINT", signal.default_int_handler),
    # a closed terminal or ssh session: it killed the run without saving (only the last periodic state stayed)
    pytest.param("SIGHUP", signal.SIG_DFL, marks=pytest.mark.skipif(not hasattr(signal, "SIGHUP"),
                                                                      reason="no SIGHUP on this platform")),
])
def test_cli_ctrl_c_or_hangup_saves_state_and_exits_128_plus_the_signal(
    tmp_path, data_dir, monkeypatch, capsys, sig_name, handler  # noqa: F811
):
    """``lpm train`` (in process) and a Ctrl-C (exit 130) or SIGHUP (exit 129) during step 3: stop after it,
    save, put the handler back."""
    sig = getattr(signal, sig_name)
    real_next, calls = CropSampler.next, {"n": 0}

    def next_then_signal(self):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), sig)
        return real_next(self)

    out = tmp_path / "run"
    config = _write_config(tmp_path, data_dir, out)
    monkeypatch.setattr(CropSampler, "next", next_then_signal)
    old = signal.signal(sig, handler)
    try:
        rc = main(["train", str(config), "--device", "cpu", "--no-progress"])
        assert signal.getsignal(sig) == handler  # put back
    finally:
        signal.signal(sig, old)
    captured = capsys.readouterr()
    assert rc == 128 + sig, captured.err
    assert int(torch.load(out / "state.pt", weights_only=True)["step"]) == 3
    assert f"interrupted by {sig_name} at step 3 of 6" in captured.err and "--resume" in captured.err
    assert "6 crops of 32px" in captured.out and "Traceback" not in captured.err


def test_cli_sigterm_from_outside_exits_143_with_state_saved(tmp_path, data_dir):  # noqa: F811
    """``lpm train`` in a subprocess, SIGTERM from outside while it trains: it stops at a step boundary,
    saves, prints the resume command and the real budget, and exits 143; the state then resumes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    out = tmp_path / "run"
    config = _write_config(tmp_path, data_dir, out, steps=100000, checkpoint_every=100000)
    cmd = [sys.executable, "-m", "lpm.cli", "train", str(config), "--device", "cpu", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 240  # importing torch on a busy machine can take a while
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "log.csv").exists() and len((out / "log.csv").read_text().splitlines()) >= 3:
                break  # two steps trained
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, (proc.returncode, stderr[-2000:])
    assert "Traceback" not in stderr
    state = torch.load(out / "state.pt", weights_only=True)
    step = int(state["step"])
    assert step >= 2 and state["optimizer"]["state"]
    assert f"training interrupted by SIGTERM at step {step} of 100000" in stderr
    assert str(out / "state.pt") in stderr and f"lpm train {out / 'config.yaml'} --resume" in stderr
    assert f"{step * 2} crops of 32px" in stdout, stdout
    # the saved state resumes (and a zero time budget stops it again at once, at the same step)
    rc = main(["train", str(out / "config.yaml"), "--resume", "--max-minutes", "0", "--device", "cpu", "--no-progress"])
    assert rc == 0
    assert int(torch.load(out / "state.pt", weights_only=True)["step"]) == step


def test_a_second_run_on_a_busy_out_dir_is_refused_and_changes_nothing(tmp_path, data_dir):  # noqa: F811
    """Two runs started on one out_dir at once (two probes started in the same second did this) would mix
    their logs and states: while one trains there, the out_dir is locked and another run is refused — in a
    separate process, as it happens, and exit 2 from the CLI; once the first is gone the lock is gone too."""
    import fcntl

    out = tmp_path / "busy"
    config = _write_config(tmp_path, data_dir, out)
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(out)!r}, os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('locked', flush=True); time.sleep(120)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        r = subprocess.run([sys.executable, "-m", "lpm.cli", "train", str(config)], capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 2, r.stdout + r.stderr
        assert "in use by another training process" in r.stderr and "Traceback" not in r.stderr
        assert list(out.iterdir()) == []  # nothing was written
    finally:
        holder.kill()
        holder.wait()
    # the holder's death released the lock: the run goes ahead, and holds the lock while it trains
    seen = {}
    real_next = CropSampler.next

    def probing_next(self):
        fd = os.open(out, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            seen["locked"] = False
        except BlockingIOError:
            seen["locked"] = True
        finally:
            os.close(fd)
        return real_next(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(CropSampler, "next", probing_next)
        assert main(["train", str(config)]) == 0
    assert seen == {"locked": True}
    fd = os.open(out, os.O_RDONLY)  # released after the run
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.close(fd)


def _rows(out: Path) -> list[tuple]:
    """log.csv without the columns that follow the wall clock (img/s, elapsed)."""
    return [(r["stage"], r["rate"], r["step"], r["loss"], r["bpp"], r["psnr"], r["lr"]) for r in _log(out)]


def test_a_killed_run_resumes_with_the_log_and_ledger_of_one_never_stopped(tmp_path, data_dir):  # noqa: F811
    """Killed in step 5 (last state at step 3, one step into a 2-step log interval), with a torn log line and a
    temporary of an interrupted save left behind: the resumed run's log.csv is the uninterrupted run's row for
    row (no repeated rows, the first row after the resume averages the same steps), one ledger record, no
    temporary left."""
    from lpm.train.runner import load_config

    ref_cfg = _write_config(tmp_path, data_dir, tmp_path / "ref", log_every=2)
    Runner(load_config(ref_cfg), device="cpu", progress=False).run()

    out = tmp_path / "run"
    config = _write_config(tmp_path, data_dir, out, log_every=2)
    _kill_in_step(config, 5)
    assert [r[2] for r in _rows(out)] == ["2", "4"]  # step 4's row was written after the state of step 3
    with open(out / "log.csv", "a") as f:
        f.write("base,0.0483,6,1.2")  # a torn row
    stale = out / ".state.pt.0123456789ab.tmp"
    stale.write_bytes(b"half a state")
    Runner(load_config(config), device="cpu", progress=False).run(resume=True)
    assert _rows(out) == _rows(tmp_path / "ref")
    assert len((out / "ledger.jsonl").read_text().splitlines()) == 1 and not stale.exists()


def test_a_stage_booked_before_a_kill_is_booked_once(tmp_path, data_dir, monkeypatch):  # noqa: F811
    """Killed after the stage's ledger record was written but before its model and state were: the resume
    books the stage again; ledger.jsonl must then hold one record (as the model's meta does), not two."""
    from lpm.train.runner import load_config

    out = tmp_path / "run"
    config = _write_config(tmp_path, data_dir, out)

    def killed(self, stage):
        raise _Killed()

    with monkeypatch.context() as mp:
        mp.setattr(Runner, "_save_model", killed)
        with pytest.raises(_Killed):
            Runner(load_config(config), device="cpu", progress=False).run()
    assert len((out / "ledger.jsonl").read_text().splitlines()) == 1  # booked, then killed
    written = Runner(load_config(config), device="cpu", progress=False).run(resume=True)
    records = [json.loads(line) for line in (out / "ledger.jsonl").read_text().splitlines()]
    assert len(records) == 1 and records == load_codec(written[0]).meta["ledger"]


def test_a_diverging_run_stops_with_one_line_and_keeps_its_last_good_state(tmp_path, data_dir, monkeypatch, capsys):  # noqa: F811
    from lpm.train.step import TrainStep

    out = tmp_path / "run"
    config = _write_config(tmp_path, data_dir, out)
    real_call, calls = TrainStep.__call__, {"n": 0}

    def nan_from_step_5(self, x):
        calls["n"] += 1
        losses = real_call(self, x)
        if calls["n"] >= 5:
            with torch.no_grad():
                self.params[0].fill_(float("nan"))
            losses = {k: torch.full_like(v, float("nan")) for k, v in losses.items()}
        return losses

    monkeypatch.setattr(TrainStep, "__call__", nan_from_step_5)
    rc = main(["train", str(config), "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "training diverged in stage" in err[0] and "at step 5" in err[0], err
    state = torch.load(out / "state.pt", weights_only=True)
    assert state["step"] == 3 and all(bool(torch.isfinite(v).all()) for v in state["model"].values()
                                      if v.is_floating_point())
    assert not (out / "model.safetensors").exists()
    # the last good weights also as the partial checkpoint (what a GPU stretch brings back), finite, step 3
    assert "partial.safetensors" in err[0]
    part = load_codec(out / "partial.safetensors")
    assert part.meta["partial"]["step"] == 3
    assert all(bool(torch.isfinite(v).all()) for v in part.model.state_dict().values() if v.is_floating_point())


def test_a_run_writes_no_file_through_a_link_in_its_out_dir(tmp_path, data_dir):  # noqa: F811
    """config.yaml and subset.txt were written with a plain open(): a link at those paths had its target
    overwritten. log.csv (appended to) is rewritten in place of a link, never through it."""
    from lpm.train.progress import LOG_COLUMNS

    out = tmp_path / "run"
    out.mkdir()
    config = _write_config(tmp_path, data_dir, out, steps=2)
    raw = yaml.safe_load(config.read_text())
    raw["data"]["fraction"] = 0.5
    config.write_text(yaml.safe_dump(raw))
    # links to files that look like this run's own (a config and log of another name could not be mistaken:
    # those are refused, test_a_fresh_run_does_not_replace_a_foreign_log_or_config)
    contents = {"config.yaml": config.read_text(), "subset.txt": "precious\n", "log.csv": ",".join(LOG_COLUMNS) + "\n"}
    victims = {}
    for name, text in contents.items():
        victims[name] = tmp_path / f"victim_{name}"
        victims[name].write_text(text)
        (out / name).symlink_to(victims[name])
    Runner(load_config(config), device="cpu", progress=False).run()
    for name, victim in victims.items():
        assert victim.read_text() == contents[name], name
        assert not (out / name).is_symlink() and (out / name).stat().st_size > 0, name


def test_a_run_that_fails_before_writing_leaves_no_new_folder(tmp_path, data_dir, monkeypatch):  # noqa: F811
    """A missing init checkpoint, or any error while the stages are built, leaves neither the out_dir nor the
    parents it made; a folder that was there already stays."""
    out = tmp_path / "new" / "deeper" / "run"
    cfg = _cfg(tmp_path, data_dir, kind="prompts", init=str(tmp_path / "missing.safetensors"),
               rates=[0.0067, 0.013], base_rate=0.013, out_dir=str(out))
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        Runner(cfg, device="cpu", progress=False).run()
    assert not (tmp_path / "new").exists()

    def broken(*a, **k):
        raise RuntimeError("stage table broke")

    monkeypatch.setattr("lpm.train.runner.initial_base", broken)
    kept = tmp_path / "kept"
    kept.mkdir()
    for where in (out, kept):
        with pytest.raises(RuntimeError, match="stage table broke"):
            Runner(_cfg(tmp_path, data_dir, out_dir=str(where)), device="cpu", progress=False).run()
    assert not (tmp_path / "new").exists() and kept.is_dir()


def _die_at_crop(monkeypatch, n: int) -> None:
    real_next, calls = CropSampler.next, {"n": 0}

    def dying_next(self):
        calls["n"] += 1
        if calls["n"] == n:
            raise _Killed()
        return real_next(self)

    monkeypatch.setattr(CropSampler, "next", dying_next)


def test_resume_follows_moved_data_and_refuses_other_images(tmp_path, data_dir, monkeypatch):  # noqa: F811
    """--data-dir wins over the config's data.dir (a run whose set moved could not be resumed: the config's
    path was used, and changing it was 'a config change'); other images than the run's are refused."""
    first = tmp_path / "first"
    shutil.copytree(data_dir, first)
    out = tmp_path / "run"
    with pytest.MonkeyPatch.context() as mp:
        _die_at_crop(mp, 5)  # the state of step 3 is on disk
        with pytest.raises(_Killed):
            Runner(_cfg(tmp_path, first), device="cpu", progress=False).run()
    moved = tmp_path / "moved"
    first.rename(moved)
    saved = load_config(out / "config.yaml")  # its data.dir names the old place
    assert saved.data.dir == str(first) and saved.out_dir == str(out)
    (w,) = Runner(saved, data_dir=str(moved), device="cpu", progress=False).run(resume=True)
    ref = Runner(_cfg(tmp_path, data_dir, out_dir=str(tmp_path / "ref")), device="cpu", progress=False).run()
    from safetensors.torch import load_file

    got, want = load_file(w), load_file(ref[0])
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)  # exactly as never stopped

    with pytest.MonkeyPatch.context() as mp:
        _die_at_crop(mp, 5)
        with pytest.raises(_Killed):
            Runner(_cfg(tmp_path, moved, out_dir=str(tmp_path / "run2")), device="cpu", progress=False).run()
    next((moved / "bsds500" / "train").iterdir()).unlink()  # another set of images now
    with pytest.raises(TrainingStateError, match="training images differ"):
        Runner(_cfg(tmp_path, moved, out_dir=str(tmp_path / "run2")), device="cpu", progress=False).run(resume=True)


def test_a_relative_out_dir_is_written_absolute(tmp_path, data_dir, monkeypatch):  # noqa: F811
    """config.yaml kept `out_dir: rel`, so `lpm train rel/config.yaml --resume` from elsewhere started afresh
    in another folder; it now names the folder itself, and --resume without a state says it starts afresh."""
    monkeypatch.chdir(tmp_path)
    Runner(_cfg(tmp_path, data_dir, out_dir="rel", steps=1), device="cpu", progress=False).run()
    assert yaml.safe_load((tmp_path / "rel" / "config.yaml").read_text())["out_dir"] == str(tmp_path / "rel")


def test_a_file_name_that_is_not_utf8_trains_and_is_listed_as_it_is(tmp_path, data_dir):  # noqa: F811
    if sys.platform == "darwin":
        pytest.skip("macOS file systems refuse names that are not UTF-8")
    copy = tmp_path / "d"
    shutil.copytree(data_dir, copy)
    train = copy / "bsds500" / "train"
    for i, p in enumerate(sorted(train.iterdir())):
        os.rename(p, os.path.join(os.fsencode(train), b"img\xff%d.png" % i))
    out = tmp_path / "run"
    Runner(_cfg(tmp_path, copy, steps=1, data={"dir": str(copy), "crop": 32, "batch": 2, "on_device": False,
                                               "splits": ["train"], "fraction": 0.5}),
           device="cpu", progress=False).run()
    listed = (out / "subset.txt").read_bytes().split()
    assert listed and all(b"\xff" in name and os.path.exists(os.path.join(os.fsencode(copy / "bsds500"), name))
                          for name in listed)


def test_a_full_disk_while_saving_the_state_is_one_os_error_and_keeps_the_last_state(tmp_path, monkeypatch):
    from lpm.train import state as state_mod

    path = tmp_path / "state.pt"
    state_mod.save_state({"a": torch.zeros(1)}, path)
    before = path.read_bytes()

    def full(obj, f):
        Path(f).write_bytes(b"part")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 127488 vs 127376")

    monkeypatch.setattr(state_mod.torch, "save", full)
    with pytest.raises(OSError, match="cannot write the training state .*previous state is kept"):
        state_mod.save_state({"a": torch.ones(1)}, path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def test_img_per_s_after_a_resume_counts_only_the_steps_timed(tmp_path):
    """A run resumed 9 steps into a 10-step log interval divided 10 steps by the time of 1 (325 img/s for 21)."""
    from lpm.train.progress import StageLog

    with StageLog(tmp_path / "log.csv", "base", None, steps=10, start=9, log_every=10, images_per_step=1,
                  device=torch.device("cpu")) as log:
        log.restore(torch.tensor([9.0, 9.0, 0.09, 9.0], dtype=torch.float64))
        time.sleep(0.1)
        one = torch.tensor(1.0)
        log.update(10, {"loss": one, "bpp_loss": one, "mse_loss": one * 0.01}, 1e-3, 60.0)
    row = _log(tmp_path)[-1]
    assert float(row["loss"]) == pytest.approx(1.0) and float(row["img_per_s"]) <= 10.5  # 1 step in ≥ 0.1 s


def test_a_fresh_run_does_not_replace_a_foreign_log_or_config(tmp_path, data_dir):  # noqa: F811
    """A fresh run truncated a log.csv and replaced a config.yaml that were not its own (the user's table,
    another run's config); its own config (a run restarted before its first state) is fine."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "log.csv").write_text("my,own,table\n1,2,3\n")
    with pytest.raises(TrainingStateError, match=r"already holds a run \(log.csv\)"):
        Runner(_cfg(tmp_path, data_dir, steps=1), device="cpu", progress=False).run()
    assert (out / "log.csv").read_text() == "my,own,table\n1,2,3\n"
    (out / "log.csv").unlink()
    (out / "config.yaml").write_text("name: other\nkind: base\nmodel: tiny\nsteps: 99\n")
    with pytest.raises(TrainingStateError, match=r"already holds a run \(config.yaml\)"):
        Runner(_cfg(tmp_path, data_dir, steps=1), device="cpu", progress=False).run()
    (out / "config.yaml").write_text(yaml.safe_dump(_cfg(tmp_path, data_dir, steps=1, max_minutes=5).to_dict()))
    Runner(_cfg(tmp_path, data_dir, steps=1), device="cpu", progress=False).run()
    assert (out / "model.safetensors").exists()
