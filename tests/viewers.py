"""The destinations' own viewers, started for real: TensorBoard and its data API,
the MLflow UI's endpoints, and headless Chromium (Debian's) driven by Playwright.

These read a copy back through the path a person's screen uses, so a copy that
trackport's own readers accept but the viewer ignores (issue: DT_DOUBLE scalars
that TensorBoard's fast loader skips) fails here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

from tensorboard_server import start_tensorboard, stop_tensorboard

# Raise TensorBoard's per-plugin sampling far above any test series, so every point is
# served. (0 is not "keep all" for the data-provider path: it downsamples to nothing.)
SAMPLES_PER_PLUGIN = "scalars=1000000,histograms=1000000,images=1000000,tensors=1000000"

ARTIFACTS = Path(os.environ.get("TRACKPORT_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / ".artifacts"))


@contextmanager
def tensorboard(logdir: Path, load_fast: bool, home: Path):
    """`tensorboard --logdir LOGDIR` serving every point; yields its base URL."""
    proc, base = start_tensorboard(logdir, home, "true" if load_fast else "false",
                                   ("--samples_per_plugin", SAMPLES_PER_PLUGIN))
    try:
        yield base
    finally:
        stop_tensorboard(proc)


def chromium_executable() -> str:
    """Debian's Chromium; installed through apt-get when missing (the suite runs as root on
    CI's machines). Fails with the command to run, and apt-get's own last words, where it
    cannot install it.

    CI runs its Python legs at once, so two suites may ask at the same moment: one lock file
    makes the second wait for the first's install, and apt-get waits for dpkg's lock instead
    of failing at once (`DPkg::Lock::Timeout`, apt.conf(5))."""
    found = _chromium_on_path()
    if found:
        return found
    fix = "apt-get update && apt-get install -y chromium"
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise RuntimeError(f"the viewer screenshots need Debian's Chromium; install it with: {fix}")
    import fcntl

    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    wait = ["-o", "DPkg::Lock::Timeout=900", "-o", "Acquire::Retries=3"]
    said = []
    with open("/tmp/trackport-chromium-install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = _chromium_on_path()          # the other leg may have installed it meanwhile
        if found:
            return found
        def apt_get(*args: str) -> bool:
            done = subprocess.run(["apt-get", *wait, "-y", "-q", *args], env=env, capture_output=True, text=True)
            if done.returncode != 0:
                said.append(f"apt-get {args[0]} exited {done.returncode}: {done.stderr.strip()[-600:]}")
            return done.returncode == 0

        # stale package lists name .deb files the mirror no longer has: update, then again
        if not apt_get("install", "chromium"):
            apt_get("update")
            apt_get("install", "chromium")
    found = _chromium_on_path()
    if found:
        return found
    raise RuntimeError(f"the viewer screenshots need Debian's Chromium; install it with: {fix}\n" + "\n".join(said))


def _chromium_on_path() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


@contextmanager
def browser_page():
    """A headless Chromium page that records console errors and uncaught page errors."""
    from playwright.sync_api import sync_playwright

    executable = chromium_executable()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.errors = []
            page.on("console", lambda m: page.errors.append(f"console.{m.type}: {m.text}")
                    if m.type == "error" and not _browser_notice(m.text) else None)
            page.on("pageerror", lambda e: page.errors.append(f"page error: {e}")
                    if not _browser_notice(str(e)) else None)
            yield page
        finally:
            browser.close()


def _browser_notice(text: str) -> bool:
    """The browser's own layout notice, which pages see as an error event but which is no
    failure: the resize notifications it names are delivered on the next frame
    (https://drafts.csswg.org/resize-observer/#deliver-resize-loop-error-notification)."""
    return "ResizeObserver loop completed with undelivered notifications" in text


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=False)
    return path


def coloured_pixels(locator) -> int:
    """Pixels of an element's screenshot that are clearly coloured (series lines; axes,
    grids, text and background are grey): 0 means an empty chart area."""
    import io

    import numpy as np
    from PIL import Image

    if locator.count() == 0:
        return 0
    image = np.asarray(Image.open(io.BytesIO(locator.first.screenshot())).convert("RGB")).astype(np.int16)
    return int(((image.max(axis=2) - image.min(axis=2)) > 60).sum())
