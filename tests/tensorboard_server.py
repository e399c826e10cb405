"""A real `tensorboard` serving a logdir, for tests that read what TensorBoard shows.

`start_tensorboard(logdir, home, load_fast)` runs the installed package
(`python -m tensorboard.main`) bound to 127.0.0.1 on port 0 (the OS picks a
free port; TensorBoard prints the URL it bound, which we read from its log),
with its info files (`.tensorboard-info`) in the test's own temporary folder.
`load_fast="true"` is TensorBoard's default loader, the Rust
tensorboard-data-server (forced, so a missing server fails instead of
silently falling back); `"false"` is the Python loader.  `stop_tensorboard`
ends the process group it started.  `get_json(url, route)` reads the HTTP
data API, e.g. `/data/plugin/scalars/tags`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

_STARTUP_TIMEOUT = 90.0
_URL = re.compile(r"TensorBoard \S+ at (http://127\.0\.0\.1:\d+/)")


def start_tensorboard(logdir: Path, home: Path, load_fast: str = "true",
                      extra_args: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / "tensorboard.log"
    env = dict(os.environ, TMPDIR=str(home), HOME=str(home))
    cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1",
           "--port", "0", f"--load_fast={load_fast}", "--reload_interval", "1", *extra_args]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=home,
                                start_new_session=True)
    deadline = time.monotonic() + _STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        found = _URL.search(text)
        if found:
            return proc, found.group(1).rstrip("/")
        if proc.poll() is not None:
            raise RuntimeError(f"tensorboard exited with {proc.returncode}:\n{text[-3000:]}")
        time.sleep(0.2)
    stop_tensorboard(proc)
    raise RuntimeError(f"tensorboard did not serve within {_STARTUP_TIMEOUT:.0f} s")


def stop_tensorboard(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def get_json(url: str, route: str, **query: str):
    full = url + route + ("?" + urllib.parse.urlencode(query) if query else "")
    with urllib.request.urlopen(full, timeout=30) as resp:
        return json.loads(resp.read())


def wait_for(probe, timeout: float = 60.0, interval: float = 0.5):
    """Call `probe()` until it returns something truthy; that value, or the last one at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got or time.monotonic() >= deadline:
            return got
        time.sleep(interval)
