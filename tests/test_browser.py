"""The rate slider in a real browser: JupyterLab (headless server) + Chromium driven by Selenium.

Opens ``notebooks/rate_slider.ipynb`` (SMOKE parameters injected) in JupyterLab, runs all cells from the
Run menu, reads the bpp the widget shows, moves the slider with the keyboard and checks that the shown bpp
changes, that the previous numbers were greyed out while the new rate was coded (and are not any more), that
a rate coded before says "cached", and that the RD plot highlights the new rate. Then, at window widths
1024 and 1366 px with the file browser open, that the widget (decoded | original zoom included) fits its
output area without horizontal overflow. Skipped when Chromium, chromedriver (Debian: ``chromium
chromium-driver``) or Selenium is missing. Every wait is bounded; JupyterLab, its kernel and the browser are
always shut down. Screenshots (``rate_slider.png``, ``rate_slider_1024.png``, ``rate_slider_1366.png``) and,
on failure, the page's HTML are left in the test's tmp directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "rate_slider.ipynb"


def _executable(name: str, default: str) -> str | None:
    return default if Path(default).exists() else shutil.which(name)


#: Reads the widget's result line atomically: [kind, bpp, rate] texts, or null before the widget exists.
READ_STATS_JS = """
const s = document.querySelector('.lpm-stats');
if (!s) return null;
const t = (c) => { const e = s.querySelector(c); return e ? e.textContent : null; };
return [t('.lpm-kind'), t('.lpm-bpp'), t('.lpm-rate')];
"""

#: Watches the stats line and the decoded image from now on; records whether either ever got the stale class.
WATCH_STALE_JS = """
window.__lpmStaleSeen = false;
const targets = [document.querySelector('.lpm-stats'), document.querySelector('.lpm-decoded')];
const obs = new MutationObserver(() => {
  if (targets.some((e) => e && e.classList.contains('lpm-stale'))) window.__lpmStaleSeen = true;
});
targets.forEach((e) => e && obs.observe(e, {attributes: true, attributeFilter: ['class']}));
window.__lpmStaleObserver = obs;
"""

#: Horizontal overflow of the widget at the current window width: the widget's output area and the parts of
#: the widget (rows, zoom pair) must not be wider than they are shown, nor stick out of the output area.
OVERFLOW_JS = """
const box = document.querySelector('.lpm-rate-slider-box');
const area = box.closest('.jp-OutputArea-output') || box.parentElement;
const limit = area.getBoundingClientRect().right + 0.5;
const over = [];
for (const el of [area, box, ...box.querySelectorAll('.lpm-row, .lpm-zoom-box, .lpm-zoom-pair')]) {
  if (el.scrollWidth > el.clientWidth + 1) {
    over.push(`${el.className}: scrollWidth ${el.scrollWidth} > ${el.clientWidth}`);
  }
}
for (const el of box.querySelectorAll('img.lpm-zoom, img.lpm-zoom-ref, img.lpm-decoded, .lpm-rd svg')) {
  const r = el.getBoundingClientRect();
  if (r.right > limit) over.push(`${el.getAttribute('class')}: right ${r.right} > ${limit}`);
  if (r.width < 40) over.push(`${el.getAttribute('class')}: only ${r.width} px wide`);
}
const zoom = box.querySelector('img.lpm-zoom').getBoundingClientRect();
const ref = box.querySelector('img.lpm-zoom-ref').getBoundingClientRect();
const sideBySide = zoom.top < ref.bottom && ref.top < zoom.bottom && zoom.right <= ref.left + 1;
return {over: over, area: area.clientWidth, zoomSideBySide: sideBySide,
        zoomRects: [zoom.left, zoom.top, zoom.width, ref.left, ref.top, ref.width].map(Math.round),
        fileBrowser: !!document.querySelector('#filebrowser:not(.lm-mod-hidden)'), width: window.innerWidth};
"""

#: The whole test (server start, browser, notebook run, slider move, two widths) must finish within this
#: many seconds.
TOTAL_SECONDS = 200

CHROMIUM = _executable("chromium", "/usr/bin/chromium")
CHROMEDRIVER = _executable("chromedriver", "/usr/bin/chromedriver")

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium browser (Debian: apt-get install chromium)"),
    pytest.mark.skipif(CHROMEDRIVER is None, reason="no chromedriver (Debian: apt-get install chromium-driver)"),
]

BROWSER_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1300",
)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_test_image(path: Path, height: int = 160, width: int = 240) -> None:
    """A photograph-like test image: smooth shading, edges, texture (a fixed seed)."""
    import imagecodecs

    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    r = 120 + 80 * np.sin(x / 23.0) * np.cos(y / 31.0)
    g = 90 + 0.5 * x + 30 * (((x // 24) + (y // 24)) % 2)
    b = 160 - 0.4 * y + 25 * np.sin((x + y) / 5.0)
    img = np.stack([r, g, b], -1) + rng.normal(0, 6, (height, width, 1))
    path.write_bytes(imagecodecs.png_encode(np.clip(img, 0, 255).astype(np.uint8)))


def _prepare_notebook(dest: Path, parameters: dict) -> Path:
    """Copy of the project notebook with ``parameters`` injected as papermill does (a tagged cell)."""
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    nb = load_notebook_node(str(NOTEBOOK))
    nb = parameterize_notebook(nb, parameters)
    out = dest / NOTEBOOK.name
    nbformat.write(nb, str(out))
    return out


def _lab_env(tmp: Path) -> dict[str, str]:
    """Environment isolating the server's config, runtime files, settings and workspaces in ``tmp``."""
    env = dict(os.environ)
    for var, sub in (
        ("JUPYTER_CONFIG_DIR", "config"),
        ("JUPYTER_RUNTIME_DIR", "runtime"),
        ("JUPYTERLAB_SETTINGS_DIR", "lab-settings"),
        ("JUPYTERLAB_WORKSPACES_DIR", "lab-workspaces"),
        ("IPYTHONDIR", "ipython"),
    ):
        (tmp / sub).mkdir(parents=True, exist_ok=True)
        env[var] = str(tmp / sub)
    # no news / update checks (there is no network, and their pop-ups would only get in the way)
    notif = tmp / "lab-settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notif.parent.mkdir(parents=True, exist_ok=True)
    notif.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    env["SE_OFFLINE"] = "true"  # Selenium must not try to download drivers or browsers
    env["OMP_NUM_THREADS"] = "1"  # the kernel shares two cores with the server and the browser
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _wait_http(url: str, token: str, deadline: float, proc: subprocess.Popen) -> None:
    req = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited early with status {proc.returncode}")
        try:
            with urllib.request.urlopen(req, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"jupyter lab did not answer at {url} in time")


def _stop_lab(proc: subprocess.Popen, base: str, token: str, runtime_dir: Path) -> None:
    """Shut the server down (which shuts its kernels down), then make sure: SIGTERM/SIGKILL its process
    group, and kill by pid any kernel still running from our private runtime directory."""
    try:
        req = urllib.request.Request(f"{base}/api/shutdown", method="POST", headers={"Authorization": f"token {token}"})
        urllib.request.urlopen(req, timeout=5).close()
    except OSError:
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=5)
                break
            except subprocess.TimeoutExpired:
                continue
    # kernels run in their own sessions; ours are the processes whose command line names our runtime dir
    marker = str(runtime_dir).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker in cmdline:
            try:
                os.kill(int(entry.name), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


@contextlib.contextmanager
def _jupyterlab(tmp_path: Path, root: Path, env: dict[str, str], notes: list[str], t0: float):
    """JupyterLab serving ``root`` and a headless Chromium: yields ``(driver, base, token)``; on failure leaves
    ``failure.png``/``failure.html``; always stops the browser, the server and its kernels, and writes
    ``browser_test.log`` (``notes``)."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    from selenium.common.exceptions import WebDriverException

    token, port = secrets.token_hex(16), _free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "jupyter.log", "wb")
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "jupyter", "lab", "--no-browser",
            f"--IdentityProvider.token={token}", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0", f"--ServerApp.root_dir={root}",
            *(["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []),
        ],
        cwd=str(root), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    driver = None
    try:
        _wait_http(f"{base}/api/status", token, time.monotonic() + 60, proc)
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in BROWSER_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
        service = webdriver.ChromeService(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
        driver = webdriver.Chrome(options=options, service=service)
        driver.set_page_load_timeout(60)
        driver.set_script_timeout(30)
        yield driver, base, token
    except BaseException:
        if driver is not None:
            try:
                driver.save_screenshot(str(tmp_path / "failure.png"))
                (tmp_path / "failure.html").write_text(driver.page_source)
            except WebDriverException:
                pass
        raise
    finally:
        if driver is not None:
            try:
                driver.quit()
            except WebDriverException:
                pass
        _stop_lab(proc, base, token, tmp_path / "jupyter" / "runtime")
        log.close()
        notes.append(f"total (servers stopped) {time.monotonic() - t0:.1f} s")
        (tmp_path / "browser_test.log").write_text("\n".join(notes) + "\n")


def _open_and_run_all(driver, base: str, token: str, name: str, wait, notes: list[str], t0: float) -> None:
    """Open notebook ``name`` in JupyterLab, wait for its kernel, and run Run → Run All Cells from the menu bar."""
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC

    driver.get(f"{base}/lab/tree/{name}?token={token}")
    # notebook open and its kernel connected and idle (toolbar indicator and status bar agree)
    wait(60).until(EC.presence_of_element_located((By.CSS_SELECTOR, ".jp-NotebookPanel .jp-Notebook")))
    wait(60).until(EC.presence_of_element_located(
        (By.CSS_SELECTOR, ".jp-NotebookPanel .jp-Notebook-ExecutionIndicator[data-status='idle']")))
    # a headless window may never get focus, and JupyterLab then has no current widget (the status bar
    # stays empty, Run All has no notebook to act on): click into the notebook as a user would
    for _ in range(5):  # the windowed notebook may re-render its cells under the pointer: retry
        try:
            wait(10).until(EC.element_to_be_clickable(
                (By.CSS_SELECTOR, ".jp-NotebookPanel .jp-Notebook .jp-Cell .jp-InputPrompt"))).click()
            break
        except StaleElementReferenceException:
            time.sleep(0.5)
    wait(60).until(EC.text_to_be_present_in_element(
        (By.CSS_SELECTOR, ".jp-StatusBar-TextItem[title^='Change kernel']"), "| Idle"))

    def started(drv):
        """Some code cell has run or is running (its prompt shows a number or '*')."""
        prompts = [e.text for e in drv.find_elements(By.CSS_SELECTOR, ".jp-CodeCell .jp-InputPrompt")]
        return any(p.strip() not in ("", "[ ]:") for p in prompts)

    # Run → Run All Cells, through the menu bar as a user would. Right after the kernel reports idle,
    # JupyterLab can still drop the request while it finishes connecting, so try up to three times.
    for attempt in range(1, 4):
        wait(20).until(EC.element_to_be_clickable(
            (By.XPATH, "//li[contains(@class,'lm-MenuBar-item')][.//div[normalize-space(text())='Run']]"))).click()
        wait(20).until(EC.element_to_be_clickable((By.XPATH, (
            "//li[contains(@class,'lm-Menu-item')]"
            "[.//div[contains(@class,'lm-Menu-itemLabel') and normalize-space(text())='Run All Cells']]")))).click()
        try:
            wait(15).until(started)
            notes.append(f"Run All Cells: attempt {attempt}, {time.monotonic() - t0:.1f} s after start")
            return
        except TimeoutException:
            continue
    raise AssertionError("Run → Run All Cells did not start the notebook")


def _waiter(driver, deadline: float):
    from selenium.webdriver.support.ui import WebDriverWait

    def wait(seconds: float) -> WebDriverWait:
        return WebDriverWait(driver, max(1.0, min(seconds, deadline - time.monotonic())), poll_frequency=0.25)

    return wait


def test_rate_slider_in_jupyterlab(tmp_path):
    pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    t0 = time.monotonic()
    deadline = t0 + TOTAL_SECONDS  # every wait below is cut to what is left of this
    notes: list[str] = []  # timings, written to browser_test.log in the test's tmp directory
    data, results, root = tmp_path / "data", tmp_path / "results", tmp_path / "lab-root"
    for d in (data, results, root):
        d.mkdir()
    _write_test_image(data / "test.png")
    # one slider, the checkpoint whose rate visibly moves (the latent-gain variant): this test drives the
    # widget; the notebook's default (prompts alone first, then this one) is run by test_slider
    _prepare_notebook(root, {"SMOKE": True, "DATA_DIR": str(data), "RESULTS_DIR": str(results),
                             "CHECKPOINTS": ["tiny-smoke"]})
    env = _lab_env(tmp_path / "jupyter")
    with _jupyterlab(tmp_path, root, env, notes, t0) as (driver, base, token):
        wait = _waiter(driver, deadline)
        _open_and_run_all(driver, base, token, NOTEBOOK.name, wait, notes, t0)

        # the widget appears; the full-resolution result follows the preview
        def shown(drv):
            """(kind, bpp, λ) as the widget shows them, once the full-resolution result is up. Read in one
            script turn: the preview and then the full result replace the line in quick succession, and
            three separate reads could mix two of them."""
            got = drv.execute_script(READ_STATS_JS)
            if not got or None in got:
                return False
            kind, bpp, rate = (t.strip() for t in got)
            return (kind, bpp, rate) if kind.startswith("FULL") and bpp else False

        kind0, bpp0, rate0 = wait(90).until(shown)
        notes.append(f"widget shows {kind0}: λ={rate0}, {bpp0} bpp, {time.monotonic() - t0:.1f} s after start")
        # the last cell writes the record; wait for it so the kernel is free to handle the slider
        record_file = results / "records" / "rate_slider.json"
        until = min(deadline, time.monotonic() + 60)
        while not record_file.exists() and time.monotonic() < until:
            time.sleep(0.25)
        assert record_file.exists(), "the notebook's record cell did not run"
        record = json.loads(record_file.read_text())
        assert record["smoke"] is True
        budget = driver.find_element(By.CSS_SELECTOR, ".lpm-budget").text
        assert "budget" in budget and "NOT the paper" in budget
        assert driver.find_element(By.CSS_SELECTOR, ".lpm-decoded").get_attribute("src").startswith("blob:")

        # nothing is marked stale once a result is up, and the stale style is in the page (greys out)
        assert not driver.find_elements(By.CSS_SELECTOR, ".lpm-rate-slider-box .lpm-stale")
        opacity = driver.execute_script(
            "const e = document.querySelector('.lpm-stats'); const a = getComputedStyle(e).opacity;"
            "e.classList.add('lpm-stale'); const b = getComputedStyle(e).opacity; e.classList.remove('lpm-stale');"
            "return [a, b];")
        assert float(opacity[0]) == 1.0 and float(opacity[1]) < 0.5, f"stale style not applied: {opacity}"

        # move the slider: focus its handle and press Home (to the lowest rate) like a keyboard user
        driver.execute_script(WATCH_STALE_JS)
        handle = driver.find_element(By.CSS_SELECTOR, ".lpm-rate-slider .noUi-handle")
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'}); arguments[0].focus();", handle)
        handle.send_keys(Keys.HOME)

        def changed(drv):
            now = shown(drv)
            return now if now and now[2] != rate0 else False

        kind1, bpp1, rate1 = wait(60).until(changed)
        notes.append(f"after Home: λ={rate1}, {bpp1} bpp, {time.monotonic() - t0:.1f} s after start")
        box = driver.find_element(By.CSS_SELECTOR, ".lpm-rate-slider-box")
        driver.execute_script("arguments[0].scrollIntoView({block: 'start'});", box)
        time.sleep(0.5)  # let the scroll settle before the picture
        driver.save_screenshot(str(tmp_path / "rate_slider.png"))
        assert float(rate1) == pytest.approx(record["numbers"]["checkpoints"]["tiny-smoke"]["lowest"]["rate"], rel=1e-3)
        assert bpp1 != bpp0, f"bpp shown did not change when the rate moved from {rate0} to {rate1}"
        lowest = record["numbers"]["checkpoints"]["tiny-smoke"]["lowest"]["bpp"]
        assert float(bpp1) == pytest.approx(lowest, abs=1e-4), "the browser shows another bpp than code_at"
        # the old numbers were greyed out while the preview was coded, and are not any more
        assert driver.execute_script("return window.__lpmStaleSeen;"), "the previous result was never marked stale"
        wait(10).until(lambda d: not d.find_elements(By.CSS_SELECTOR, ".lpm-rate-slider-box .lpm-stale"))
        # the notebook's strip cell coded the full image at every trained rate: the full result is a cache hit
        assert "cached" in driver.find_element(By.CSS_SELECTOR, ".lpm-stats .lpm-time").text
        # the RD plot (inline SVG) shows the session's points, the new rate highlighted
        current = driver.find_elements(By.CSS_SELECTOR, ".lpm-rd svg .lpm-rd-current")
        assert len(current) == 1 and float(current[0].get_attribute("data-rate")) == pytest.approx(float(rate1))
        assert len(driver.find_elements(By.CSS_SELECTOR, ".lpm-rd svg .lpm-rd-point")) >= 2
        assert driver.execute_script("return document.querySelector('.lpm-rd svg').getBoundingClientRect().width") > 100

        # narrow windows, file browser open: the widget wraps instead of scrolling sideways
        if not driver.execute_script("return !!document.querySelector('#filebrowser:not(.lm-mod-hidden)');"):
            driver.find_element(By.CSS_SELECTOR, "li.lm-TabBar-tab[data-id='filebrowser']").click()
        for width in (1024, 1366):
            driver.set_window_size(width, 900)
            wait(10).until(lambda d: d.execute_script("return window.innerWidth;") == width)
            time.sleep(0.7)  # JupyterLab re-lays out its panels on resize
            driver.execute_script("arguments[0].scrollIntoView({block: 'start'});", box)
            time.sleep(0.3)
            driver.save_screenshot(str(tmp_path / f"rate_slider_{width}.png"))
            fit = driver.execute_script(OVERFLOW_JS)
            notes.append(f"width {width}: output area {fit['area']} px, file browser open {fit['fileBrowser']}, "
                         f"overflow {fit['over']}, zoom | original (left, top, width) {fit['zoomRects']}")
            assert fit["fileBrowser"], "the file browser should be open for the width check"
            assert not fit["over"], f"horizontal overflow at {width} px: {fit['over']}"
            assert fit["zoomSideBySide"], f"decoded and original zoom are not side by side at {width} px"


def _tracked_results_digest() -> dict[str, str]:
    """sha256 of every file git tracks under results/ (what a careless run must never overwrite)."""
    out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "results"], capture_output=True, check=True)
    names = [n for n in out.stdout.decode().split("\0") if n]
    return {n: hashlib.sha256((ROOT / n).read_bytes()).hexdigest() if (ROOT / n).exists() else "missing"
            for n in names}


def test_notebook_run_without_data_leaves_tracked_results_alone(tmp_path):
    """Issue 13: a user opens the rate-slider notebook in JupyterLab as shipped (no parameters, no
    LPM_DATA_DIR, no data/kodak) and runs all cells: it falls back to the sample photographs and writes under
    results/cache/sample-photos/, never over the Kodak results git tracks."""
    if (ROOT / "data" / "kodak").is_dir():
        pytest.skip("data/kodak exists here: a data-less run is not possible in this checkout")
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: cannot tell which results are tracked")
    pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    from selenium.webdriver.common.by import By

    t0 = time.monotonic()
    deadline = t0 + TOTAL_SECONDS
    notes: list[str] = []
    root = tmp_path / "lab-root"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)  # exactly as shipped: the user's defaults
    env = _lab_env(tmp_path / "jupyter")
    env.pop("LPM_DATA_DIR", None)
    before = _tracked_results_digest()
    record = ROOT / "results" / "cache" / "sample-photos" / "records" / "rate_slider.json"
    old_mtime = record.stat().st_mtime if record.exists() else 0.0
    with _jupyterlab(tmp_path, root, env, notes, t0) as (driver, base, token):
        wait = _waiter(driver, deadline)
        _open_and_run_all(driver, base, token, NOTEBOOK.name, wait, notes, t0)

        def finished(drv):
            """Every code cell ran (a number in its prompt) and the kernel is idle again."""
            prompts = [e.text.strip() for e in drv.find_elements(By.CSS_SELECTOR, ".jp-CodeCell .jp-InputPrompt")]
            idle = drv.find_elements(
                By.CSS_SELECTOR, ".jp-NotebookPanel .jp-Notebook-ExecutionIndicator[data-status='idle']")
            return bool(prompts) and all(p[1:-2].strip().isdigit() for p in prompts) and bool(idle)

        wait(TOTAL_SECONDS).until(finished)
        errors = driver.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr'] .jp-RenderedText, .jp-RenderedText[data-mime-type='application/vnd.jupyter.error']")
        notes.append(f"all cells ran, {time.monotonic() - t0:.1f} s after start; error outputs: {len(errors)}")
        assert not driver.find_elements(By.CSS_SELECTOR, ".jp-RenderedText[data-mime-type='application/vnd.jupyter.error']")
    after = _tracked_results_digest()
    changed = sorted(n for n in before if before[n] != after.get(n))
    assert not changed, f"a data-less notebook run changed tracked results: {changed[:10]}"
    assert record.exists() and record.stat().st_mtime > old_mtime, "the run did not write its fallback record"
