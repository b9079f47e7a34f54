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
