"""The papermill batch (`lpm reproduce`): runs notebooks in order, names the failing notebook and cell."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat

from lpm.cli import main
from lpm.notebooks import NOTEBOOK_DIR, NOTEBOOK_ORDER, find_notebooks


def _notebook(path: Path, cells: list[str]) -> Path:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("SMOKE = False\nRESULTS_DIR = None\nDATA_DIR = None\nRECOMPUTE = False")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params] + [nbformat.v4.new_code_cell(c) for c in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))
    return path


def test_batch_runs_in_order_and_names_the_failing_cell(tmp_path, capsys):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    rec = "import json, pathlib\npathlib.Path(RESULTS_DIR, 'rec.json').write_text(json.dumps({'smoke': SMOKE}))"
    _notebook(nbs / "good.ipynb", [rec])
    _notebook(nbs / "zz_bad.ipynb", ["x = 1", "raise ValueError('broken on purpose')"])
    res = tmp_path / "res"
    rc = main(["reproduce", "--notebooks-dir", str(nbs), "--results-dir", str(res), "--smoke"])
    out, err = capsys.readouterr()
    assert rc == 1
    assert "[1/2] good.ipynb" in out and "zz_bad.ipynb" in err and "cell 2" in err and "broken on purpose" in err
    assert json.loads((res / "rec.json").read_text()) == {"smoke": True}  # parameters were injected
    assert (res / "notebooks" / "good.ipynb").exists() and (res / "notebooks" / "zz_bad.failed.ipynb").exists()
    assert str(res / "notebooks" / "zz_bad.failed.ipynb") in err
    rc = main(["reproduce", "--notebooks-dir", str(nbs), "--results-dir", str(res), "--only", "good"])
    assert rc == 0
    assert main(["reproduce", "--notebooks-dir", str(nbs), "--only", "nope"]) == 2


def test_a_failed_run_keeps_the_last_good_executed_notebook(tmp_path, capsys):
    """A failed (or smoke) run used to overwrite the previous good executed copy with its traceback."""
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    _notebook(nbs / "nb.ipynb", ["import os\nif os.environ.get('LPM_TEST_BREAK'):\n    raise RuntimeError('now broken')",
                                 "print('fine')"])
    res = tmp_path / "res"
    assert main(["reproduce", "--notebooks-dir", str(nbs), "--results-dir", str(res)]) == 0
    good = (res / "notebooks" / "nb.ipynb").read_bytes()
    os.environ["LPM_TEST_BREAK"] = "1"
    try:
        assert main(["reproduce", "--notebooks-dir", str(nbs), "--results-dir", str(res)]) == 1
    finally:
        del os.environ["LPM_TEST_BREAK"]
    assert (res / "notebooks" / "nb.ipynb").read_bytes() == good
    assert "now broken" in (res / "notebooks" / "nb.failed.ipynb").read_text()
    assert sorted(p.name for p in (res / "notebooks").iterdir()) == ["nb.failed.ipynb", "nb.ipynb"]
    capsys.readouterr()


def test_a_good_run_removes_the_failed_copy_and_no_kernel_folder_is_left(tmp_path, monkeypatch, capsys):
    """After a failure (or Ctrl-C) and a good rerun, results/notebooks/ still showed <name>.failed.ipynb beside
    the good copy, and every failed or interrupted batch left an lpm-kernels-* folder in the temp dir."""
    import tempfile

    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", None)
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    _notebook(nbs / "nb.ipynb", ["import os\nif os.environ.get('LPM_TEST_BREAK'):\n    raise RuntimeError('now broken')"])
    res = tmp_path / "res"
    monkeypatch.setenv("LPM_TEST_BREAK", "1")
    assert main(["reproduce", "--notebooks-dir", str(nbs), "--results-dir", str(res)]) == 1
    assert (res / "notebooks" / "nb.failed.ipynb").exists()
    assert not list((tmp_path / "tmp").glob("lpm-kernels-*"))
    monkeypatch.delenv("LPM_TEST_BREAK")
    assert main(["reproduce", "--notebooks-dir", str(nbs), "--results-dir", str(res)]) == 0
    assert sorted(p.name for p in (res / "notebooks").iterdir()) == ["nb.ipynb"]
    assert not list((tmp_path / "tmp").glob("lpm-kernels-*"))
    capsys.readouterr()


def test_a_cell_timeout_of_zero_or_less_is_refused(tmp_path, capsys):
    """--cell-timeout 0 or -5 ran every cell without any time limit, silently."""
    import pytest

    (tmp_path / "nbs").mkdir()
    _notebook(tmp_path / "nbs" / "nb.ipynb", ["x = 1"])
    for bad in ("0", "-5", "ten"):
        with pytest.raises(SystemExit) as e:
            main(["reproduce", "--cell-timeout", bad, "--notebooks-dir", str(tmp_path / "nbs"),
                  "--results-dir", str(tmp_path / "res")])
        assert e.value.code == 2 and "--cell-timeout" in capsys.readouterr().err


def test_smoke_runs_keep_their_executed_notebooks_apart(tmp_path, monkeypatch):
    from lpm import notebooks

    nbs = tmp_path / "nbs"
    nbs.mkdir()
    _notebook(nbs / "nb.ipynb", ["x = 1"])
    monkeypatch.setattr(notebooks, "PROJECT_ROOT", tmp_path / "proj")
    done = notebooks.run_all({"SMOKE": True}, notebooks=[nbs / "nb.ipynb"], log=lambda m: None)
    assert done == [tmp_path / "proj" / "results" / "cache" / "smoke" / "notebooks" / "nb.ipynb"]


def test_project_notebooks_are_ordered_and_stripped():
    found = [p.stem for p in find_notebooks(NOTEBOOK_DIR)]
    assert found[-1] == "claims" if "claims" in found else True
    assert [n for n in found if n in NOTEBOOK_ORDER] == [n for n in NOTEBOOK_ORDER if n in found]
    for p in NOTEBOOK_DIR.glob("*.ipynb"):
        nb = nbformat.read(str(p), as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code and "parameters" in code[0].metadata.get("tags", []), f"{p.name}: first code cell not tagged"
        for c in code:
            assert not c.get("outputs") and c.get("execution_count") is None, f"{p.name} has outputs committed"


# ----------------------------------------------------------------------------- all-or-nothing outputs
#: A notebook writing through the helpers: table "<nb>_value" and record "<nb>" hold $LPM_TEST_VALUE; an
#: evaluation cache file is written in place (not staged); "b" also copies what record "a" says.
_WRITE = ("import os, pandas as pd\nfrom lpm.figures import context as F\nname = os.environ['LPM_TEST_NB']\n"
          "v = int(os.environ.get('LPM_TEST_VALUE', '0'))")


def _writer(path: Path, name: str, extra: str = "") -> Path:
    cells = [_WRITE.replace("os.environ['LPM_TEST_NB']", repr(name)),
             "a = F.read_record('a', RESULTS_DIR)\nseen = a['numbers']['v'] if a else None\n"
             "F.save_table(pd.DataFrame({'v': [v], 'a': [seen]}), name + '_value', RESULTS_DIR)\n"
             "F.record(name, {'v': v, 'a': seen}, RESULTS_DIR)\n"
             "os.makedirs(os.path.join(RESULTS_DIR, 'eval'), exist_ok=True)\n"
             "open(os.path.join(RESULTS_DIR, 'eval', f'{name}-{v}.json'), 'w').write('{}')", extra]
    return _notebook(path, [c for c in cells if c])


def _tracked(res: Path) -> dict:
    return {p.relative_to(res).as_posix(): p.read_bytes() for p in sorted(res.rglob("*"))
            if p.is_file() and p.relative_to(res).parts[0] in ("figures", "tables", "records")}


def test_a_failed_batch_publishes_no_figure_table_or_record(tmp_path, monkeypatch, capsys):
    """Notebooks wrote their tables and records in place as they ran: a batch that failed in its second notebook
    left the first one's new outputs beside the second's old ones (results no longer agreeing)."""
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    _writer(nbs / "a.ipynb", "a")
    _writer(nbs / "b.ipynb", "b", "import os\nif os.environ.get('LPM_TEST_BREAK'):\n    raise RuntimeError('now broken')")
    res = tmp_path / "res"
    args = ["reproduce", "--notebooks-dir", str(nbs), "--results-dir", str(res)]
    monkeypatch.setenv("LPM_TEST_VALUE", "1")
    assert main(args) == 0
    good = _tracked(res)
    assert json.loads((res / "records" / "b.json").read_text())["numbers"] == {"v": 1, "a": 1}
    monkeypatch.setenv("LPM_TEST_VALUE", "2")
    monkeypatch.setenv("LPM_TEST_BREAK", "1")
    assert main(args) == 1
    assert _tracked(res) == good  # a's table and record of this run are not in place
    assert "nothing of this batch was published" in capsys.readouterr().out
    assert (res / "eval" / "a-2.json").is_file()  # cached evaluations of the failed run are kept
    assert not (res / ".staging").exists()
    monkeypatch.delenv("LPM_TEST_BREAK")
    monkeypatch.setenv("LPM_TEST_VALUE", "3")
    assert main(args) == 0
    # b read the record a wrote in this batch (staged), not the published one of the last batch
    assert json.loads((res / "records" / "b.json").read_text())["numbers"] == {"v": 3, "a": 3}
    assert (res / "tables" / "a_value.csv").read_text() == "v,a\n3,1\n"  # a read its last published record
    manifest = json.loads((res / "outputs.json").read_text())["notebooks"]
    assert manifest["a"]["files"] == ["records/a.json", "tables/a_value.csv", "tables/a_value.md"]
    assert not (res / ".staging").exists()
    capsys.readouterr()


def test_a_file_a_notebook_no_longer_writes_is_removed_others_stay(tmp_path, monkeypatch, capsys):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    _writer(nbs / "a.ipynb", "a", "import os\nif os.environ.get('LPM_TEST_EXTRA'):\n"
                                  "    F.save_table(pd.DataFrame({'x': [1]}), 'a_extra', RESULTS_DIR)")
    _writer(nbs / "b.ipynb", "b")
    res = tmp_path / "res"
    args = ["reproduce", "--notebooks-dir", str(nbs), "--results-dir", str(res)]
    monkeypatch.setenv("LPM_TEST_EXTRA", "1")
    assert main(args) == 0
    assert (res / "tables" / "a_extra.csv").is_file()
    (res / "tables" / "by_hand.csv").write_text("mine\n")  # no notebook's: never removed
    monkeypatch.delenv("LPM_TEST_EXTRA")
    assert main(args + ["--only", "b"]) == 0  # a did not run: its files stay
    assert (res / "tables" / "a_extra.csv").is_file()
    assert main(args + ["--only", "a"]) == 0
    assert "removed 2 that the batch's notebooks no longer write: tables/a_extra.csv, tables/a_extra.md" in capsys.readouterr().out
    assert not (res / "tables" / "a_extra.csv").exists() and not (res / "tables" / "a_extra.md").exists()
    assert (res / "tables" / "b_value.csv").is_file() and (res / "tables" / "by_hand.csv").is_file()


def test_a_killed_batch_publishes_nothing_and_the_next_batch_cleans_up(tmp_path):
    """SIGTERM (the CLI turns it into an interrupt) and SIGKILL while the second notebook runs: the first
    notebook's new outputs must not be in place; a killed batch's stage is dropped by the next batch."""
    import signal
    import subprocess
    import sys
    import time

    nbs = tmp_path / "nbs"
    nbs.mkdir()
    _writer(nbs / "a.ipynb", "a")
    _writer(nbs / "b.ipynb", "b", "import os, time\nif os.environ.get('LPM_TEST_HANG'):\n"
                                  "    open(os.environ['LPM_TEST_HANG'], 'w').close()\n    time.sleep(300)")
    res = tmp_path / "res"
    cmd = [sys.executable, "-m", "lpm.cli", "reproduce", "--notebooks-dir", str(nbs), "--results-dir", str(res)]
    env = {**os.environ, "LPM_TEST_VALUE": "1"}
    assert subprocess.run(cmd, env=env, capture_output=True, timeout=300).returncode == 0
    good = _tracked(res)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        hang = tmp_path / f"hang-{sig}"
        proc = subprocess.Popen(cmd, env={**env, "LPM_TEST_VALUE": "2", "LPM_TEST_HANG": str(hang)},
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        try:
            deadline = time.monotonic() + 240
            while not hang.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            assert hang.exists(), proc.stderr.read() if proc.poll() is not None else "b never started"
            assert list((res / ".staging").glob("lpm-batch-*/a/tables/a_value.csv"))  # a's outputs: staged
            proc.send_signal(sig)
            proc.wait(timeout=60)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the kernel, too
            except ProcessLookupError:
                pass
            proc.wait()
        assert _tracked(res) == good, sig
        if sig == signal.SIGTERM:
            assert proc.returncode == 128 + signal.SIGTERM and not (res / ".staging").exists()
    assert list((res / ".staging").glob("lpm-batch-*"))  # SIGKILL: nothing ran to clean up
    out = subprocess.run(cmd + ["--only", "a"], env={**env, "LPM_TEST_VALUE": "3"}, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and "dropped the unpublished outputs of an interrupted batch" in out.stdout
    assert not (res / ".staging").exists()
    assert json.loads((res / "records" / "a.json").read_text())["numbers"]["v"] == 3


def test_a_publish_killed_half_way_is_finished_by_the_next_batch(tmp_path, monkeypatch):
    """Once a batch starts to move its files into place it is published: the next batch moves in the rest."""
    import tempfile

    import pandas as pd

    from lpm import staging
    from lpm.figures import context as F

    batch = tempfile.mkdtemp(prefix=f"lpm-batch-{os.getpid()}-", dir=tmp_path)
    monkeypatch.setenv("LPM_STAGE", batch)
    monkeypatch.setenv("LPM_STAGE_NOTEBOOK", "nb")
    res = tmp_path / "res"
    for name in ("t1", "t2", "t3"):
        F.save_table(pd.DataFrame({"x": [1]}), name, res)
    assert not (res / "tables").exists()
    moves = []

    def killed(src, dst):  # the plan is written (atomic_write's replace), one staged file moved, then a kill
        if Path(src).parent.name == "tables":
            if moves:
                raise KeyboardInterrupt
            moves.append(dst)
        os.rename(src, dst)

    monkeypatch.setattr(staging.os, "replace", killed)
    try:
        staging.publish(Path(batch), ["nb"], log=lambda m: None)
    except KeyboardInterrupt:
        pass
    assert staging.discard(Path(batch)) == [res.resolve()]  # the planned stage is kept, not dropped
    monkeypatch.undo()
    assert len(list((res / "tables").iterdir())) == 1
    staging.recover([res], log=lambda m: None)
    assert sorted(p.name for p in (res / "tables").iterdir()) == [f"t{i}.{e}" for i in (1, 2, 3) for e in ("csv", "md")]
    assert len(json.loads((res / "outputs.json").read_text())["notebooks"]["nb"]["files"]) == 6
    assert not (res / ".staging").exists()


def test_published_paths_are_what_the_notebooks_print_and_record(tmp_path, capsys):
    """Inside a batch the files are written to a stage: rate_slider recorded its strip figure as
    '.staging/lpm-batch-…/rate_slider/figures/…png' (gone after the batch) and every notebook printed such paths."""
    from lpm.staging import published_path

    res = tmp_path / "res"
    staged = res / ".staging" / "lpm-batch-1-abc" / "rate_slider" / "figures" / "strip.png"
    assert published_path(staged) == res / "figures" / "strip.png"
    assert published_path(res / "figures" / "strip.png") == res / "figures" / "strip.png"
    assert published_path(Path("/x/.staging/other/figures/a.png")) == Path("/x/.staging/other/figures/a.png")

    assert main(["reproduce", "--only", "rate_slider", "--smoke", "--results-dir", str(res)]) == 0
    out = capsys.readouterr().out
    rec = json.loads((res / "records" / "rate_slider.json").read_text())["numbers"]
    figs = [v for k, v in _walk(rec) if k == "strip_figure"]
    assert figs and all(f.startswith("figures/") and (res / f).is_file() for f in figs), figs
    assert f"recorded {res / 'records' / 'rate_slider.json'}" in out, out[-2000:]


def _walk(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k, v
            yield from _walk(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk(v)
