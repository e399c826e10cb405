"""A planted credential appears in no artefact of a full run, for every connector that takes one.

Each test plants a distinctive key where the tracker's users keep it (its
environment variable, a URI's userinfo, or the SDK's own login storage under a
temporary HOME), then runs the REAL CLI as a child process against the local
servers -- with progress bars on (stderr is a pseudo-terminal), `--log-file`
and `--report` -- through copy, verify, export and plan.  While each command
runs, the command lines of every process on the machine are polled
(/proc/*/cmdline), and the process tree of the command is recorded (W&B's
`wandb-core` sidecar is a child of ours).  Afterwards every artefact is
searched for the key in its raw, URL-encoded and base64 forms: stdout,
stderr, the debug log, the JSON report, the ledger, every file under the
working directory (exports, parquet values decoded too, destination files)
and the SDK's own files under HOME.  A refused key gives exit 1 or 2 with a
message that does not echo it.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, quote_plus

import pyarrow.parquet as pq

from neptune_api_server import FakeNeptune, FakeRun as NeptuneRun
from pluto_server import PlutoTestServer
from trackport.testing.corpus import CORPUS_PROJECT, build_corpus
from trackport.testing.exporter_layout import write_exporter_export
from wandb_server import WandbServer

CASES = ("scalars", "files", "string_series")
COMMAND_TIMEOUT_S = 120
_TRACKER_ENV = ("WANDB_", "PLUTO_", "MLOP_", "NEPTUNE_", "MLFLOW_", "NETRC", "XDG_")


# -- the forms a key can take in an artefact --------------------------------------------------
def key_forms(key: str) -> list[bytes]:
    """`key` raw, URL-encoded, and base64-encoded at each of the 3 byte alignments (the
    characters that depend on the key alone), standard and URL-safe alphabets."""
    raw = key.encode()
    forms = {raw, quote(key, safe="").encode(), quote_plus(key).encode()}
    for pad in range(3):
        encoded = base64.b64encode(b"\0" * pad + raw)
        start, end = -(-8 * pad // 6), 8 * (pad + len(raw)) // 6
        core = encoded[start:end]
        forms.add(core)
        forms.add(core.translate(bytes.maketrans(b"+/", b"-_")))
    return sorted(forms)


def leaks(data: bytes, keys: dict[str, list[bytes]]) -> list[str]:
    return [name for name, forms in keys.items() if any(f in data for f in forms)]


def artefact_bytes(path: Path) -> bytes:
    """A file's bytes; a parquet file's decoded values too (compressed pages hide strings)."""
    data = path.read_bytes()
    if path.suffix == ".parquet" and data[:4] == b"PAR1":
        try:
            table = pq.read_table(path)
            data += repr(table.to_pylist()).encode("utf-8", "replace")
            data += repr(table.schema.metadata).encode("utf-8", "replace")
        except Exception:  # noqa: BLE001 - a torn part: its raw bytes were scanned
            pass
    return data


def scan_tree(root: Path, keys: dict[str, list[bytes]], skip: frozenset[Path] = frozenset()) -> dict[str, list[str]]:
    """{file: [key names found]} for every file under `root` (symlinks not followed)."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path in skip or path.is_symlink() or not path.is_file():
            continue
        hits = leaks(artefact_bytes(path), keys)
        if hits:
            found[str(path)] = hits
    return found


# -- running the CLI as a child, watched --------------------------------------------------------
@dataclass
class Watched:
    code: int
    stdout: bytes
    stderr: bytes                     # what the terminal showed (progress bars included)
    tree: dict[int, bytes] = field(default_factory=dict)   # pid -> cmdline of our process tree
    cmdline_leaks: dict[int, bytes] = field(default_factory=dict)  # any process's cmdline with a key
    report: dict | None = None                                 # what --report wrote

    def text(self) -> str:
        return (self.stdout + self.stderr).decode("utf-8", "replace")


def _proc_table() -> dict[int, tuple[int, int, bytes]]:
    """pid -> (ppid, session id, cmdline) of every process we can read."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                stat = fh.read()
            with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                cmdline = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        table[int(entry.name)] = (int(fields[1]), int(fields[3]), cmdline)
    return table


def run_watched(args: list[str], env: dict[str, str], cwd: Path, keys: dict[str, list[bytes]]) -> Watched:
    """`python -m trackport ARGS`, stderr on a pseudo-terminal, /proc polled until it ends."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    out_path = cwd / f".stdout-{time.monotonic_ns()}"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "trackport", *args], cwd=cwd, env=env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=slave, start_new_session=True)
    os.close(slave)
    terminal = bytearray()

    def drain() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:      # EIO: every writer closed the terminal
                return
            if not chunk:
                return
            terminal.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    tree: dict[int, bytes] = {proc.pid: b""}
    cmdline_leaks: dict[int, bytes] = {}
    deadline = time.monotonic() + COMMAND_TIMEOUT_S
    try:
        while True:
            finished = proc.poll() is not None
            table = _proc_table()
            grew = True
            while grew:
                grew = False
                for pid, (ppid, sid, cmdline) in table.items():
                    if pid not in tree and (ppid in tree or sid == proc.pid):
                        tree[pid] = cmdline
                        grew = True
            for pid, (ppid, _sid, cmdline) in table.items():
                if pid in tree and cmdline:
                    tree[pid] = cmdline
                # the commands a test started are the user's own command lines (the key may be
                # in a URI the user typed): this test's, and those of the same test running at
                # once in another pytest (CI's two legs); every process below them is ours.  A
                # child caught between fork and exec still shows its parent's command line.
                parent_line = table.get(ppid, (None, None, None))[2]
                typed = ppid == os.getpid() or (b"\0-m\0trackport\0" in cmdline and b"pytest" in (parent_line or b""))
                if not typed and cmdline != parent_line and leaks(cmdline, keys):
                    cmdline_leaks[pid] = cmdline
            if finished:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"trackport {' '.join(args)} ran longer than {COMMAND_TIMEOUT_S}s")
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait(10)
        # children of ours that outlive the command (a sidecar shutting down) end now
        for pid in tree:
            if pid != proc.pid:
                try:
                    os.kill(pid, 9)
                except OSError:
                    pass
        reader.join(10)
        os.close(master)
    stdout = out_path.read_bytes()
    out_path.unlink()
    return Watched(proc.returncode, stdout, bytes(terminal), tree, cmdline_leaks)


class SecretRun:
    """A working directory, a temporary HOME and the planted keys of one test."""

    def __init__(self, tmp_path: Path, keys: dict[str, str], env: dict[str, str]):
        self.work = tmp_path / "work"
        self.home = tmp_path / "home"
        self.work.mkdir()
        self.home.mkdir()
        self.keys = {name: key_forms(value) for name, value in keys.items()}
        base = {k: v for k, v in os.environ.items() if not k.startswith(_TRACKER_ENV)}
        self.env = {**base, "HOME": str(self.home), "XDG_DATA_HOME": str(self.home / ".local/share"),
                    "XDG_CONFIG_HOME": str(self.home / ".config"), "XDG_CACHE_HOME": str(self.home / ".cache"),
                    "WANDB_SILENT": "false", "COLUMNS": "160", **env}
        self.planted: set[Path] = set()      # the user's own credential files: the key belongs there
        self.children: set[str] = set()
        self._count = 0
        self._lock = threading.Lock()

    def run(self, *args: str, expect: int | tuple[int, ...] = 0, artefacts: bool = True) -> Watched:
        with self._lock:
            self._count += 1
            n = self._count
        log, report = self.work / f"debug-{n}.log", self.work / f"report-{n}.json"
        extra = ["--log-file", str(log), "--report", str(report)] if artefacts else []
        result = run_watched([*args, *extra], self.env, self.work, self.keys)
        result.report = json.loads(report.read_text()) if artefacts and report.exists() else None
        expected = (expect,) if isinstance(expect, int) else expect
        said = ""
        if result.report:   # what went wrong, run by run, when the terminal shows only progress bars
            said = "\n".join([*(f"{r['run_id']}: {r['status']}: {r.get('error')} drops={r.get('drops')}"
                                 for r in result.report.get("runs", []) if r.get("error") or r.get("drops")),
                               *result.report.get("notes", [])])
        assert result.code in expected, (f"trackport {' '.join(args)} -> {result.code}\n{said}\n"
                                         f"{result.text()[-4000:]}")
        assert result.cmdline_leaks == {}, f"a key is on a command line: {result.cmdline_leaks}"
        for name, where in (("stdout", result.stdout), ("terminal", result.stderr)):
            assert leaks(where, self.keys) == [], f"{args[0]}: a key is in the {name}:\n{where[-3000:]!r}"
        if artefacts:
            # a usage error (2) stops before any report exists; the log is there in every case
            assert log.exists() and report.exists() == (result.code != 2), (log, report, result.code)
            for path in (log, report) if result.code != 2 else (log,):
                hits = leaks(artefact_bytes(path), self.keys)
                assert hits == [], f"{args[0]}: {hits} in {path.name}:\n{path.read_text(errors='replace')[-3000:]}"
        with self._lock:
            self.children.update(c.split(b"\0")[0].decode(errors="replace").rsplit("/", 1)[-1]
                                 for pid, c in result.tree.items() if c)
        return result

    def run_together(self, *commands: tuple[str, ...]) -> list[Watched]:
        """Commands that do not write the same place (verify, plan, export elsewhere), at once."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(len(commands)) as pool:
            return list(pool.map(lambda args: self.run(*args), commands))

    def assert_no_leak_on_disk(self) -> None:
        assert scan_tree(self.work, self.keys) == {}
        assert scan_tree(self.home, self.keys, frozenset(self.planted)) == {}

    def plant_file(self, relative: str, text: str, mode: int = 0o600) -> Path:
        path = self.home / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(mode)
        self.planted.add(path)
        return path


def corpus_export(root: Path) -> Path:
    runs = [r for r in build_corpus(big=False) if r.case in CASES]
    write_exporter_export(root, runs)
    return root


def test_key_forms_cover_base64_at_every_alignment():
    key = "tp-Secret_key-0123456789"
    forms = key_forms(key)
    for prefix in (b"", b"a", b"ab", b"api:"):
        blob = base64.b64encode(prefix + key.encode() + b"!")
        assert any(f in blob for f in forms), prefix
    assert leaks(b"x " + quote(key + "/", safe="").encode(), {"k": forms}) == ["k"]
    assert leaks(b"tp-Secret_key-012345678", {"k": forms}) == []


# -- MLflow -----------------------------------------------------------------------------------
def test_mlflow_token_password_and_uri_userinfo_stay_out(tmp_path, mlflow_server):
    keys = {"MLFLOW_TRACKING_TOKEN": "mlf-token-Zq81xV0e7TT",
            "MLFLOW_TRACKING_PASSWORD": "mlf-pass-Hy62kWq3LLp",
            "uri-userinfo": "mlf-uri-Pw93ddLq0ZZ"}
    s = SecretRun(tmp_path, keys, {"MLFLOW_TRACKING_TOKEN": keys["MLFLOW_TRACKING_TOKEN"],
                                   "MLFLOW_TRACKING_USERNAME": "alice",
                                   "MLFLOW_TRACKING_PASSWORD": keys["MLFLOW_TRACKING_PASSWORD"]})
    src = corpus_export(s.work / "export")
    host = mlflow_server.split("://", 1)[1]
    dest = f"mlflow+http://bob:{keys['uri-userinfo']}@{host}"
    exp = ["--mlflow-experiment", f"{tmp_path.name}-{{project}}"]
    copied = s.run("copy", str(src), dest, *exp)
    assert b"runs" in copied.stderr            # the progress bar was drawn on the terminal
    assert copied.report["destination"] == f"mlflow+http://{host}" and copied.report["totals"]["moved"] == len(CASES)
    s.run_together(("verify", str(src), dest, *exp),
                   ("export", dest, str(s.work / "back"), "--project", f"{tmp_path.name}-{CORPUS_PROJECT}", *exp),
                   ("plan", str(src), dest, *exp))
    assert len(list((s.work / "back" / "data").rglob("*.parquet"))) == len(CASES)
    s.assert_no_leak_on_disk()


# -- W&B ---------------------------------------------------------------------------------------
WANDB_KEY = "wbk-Lq7e2NfX0pR4sT9vW1yZ3aC5dG8hJ6kM0nP2rU4w"     # 40+ word characters after the dash


def _wandb_session(tmp_path: Path, key: str, in_env: bool) -> tuple[SecretRun, WandbServer]:
    server = WandbServer(key, {"entity": {}}, page_cap=2).start()
    env = {"WANDB_BASE_URL": server.url}
    if in_env:
        env["WANDB_API_KEY"] = key
    s = SecretRun(tmp_path, {"WANDB_API_KEY": key}, env)
    if not in_env:
        # what `wandb login` writes (wandb/sdk/lib/wbauth/wbnetrc.py `write_netrc_auth`)
        host = server.url.split("://", 1)[1]         # netloc: wbnetrc.read_netrc_auth_with_source
        s.plant_file(".netrc", f"machine {host}\n  login user\n  password {key}\n")
    return s, server


def test_wandb_key_from_the_environment_stays_out_of_everything_and_wandb_core(tmp_path):
    s, server = _wandb_session(tmp_path, WANDB_KEY, in_env=True)
    try:
        src = corpus_export(s.work / "export")
        dest = "wandb://entity/corpus"
        copied = s.run("copy", str(src), dest, "--wandb-mode", "online", "--wandb-dir", str(s.work / "wd"))
        assert b"runs" in copied.stderr            # the progress bar was drawn on the terminal
        assert any("wandb-core" in c for c in s.children), s.children   # the SDK's sidecar was watched
        assert server.rejected_auth == 0 and len(server.entities["entity"]["corpus"]) == len(CASES)
        # and, at once: verify, export, plan, and offline run files written while the key is in the env
        s.run_together(("verify", str(src), dest), ("export", dest, str(s.work / "back")), ("plan", str(src), dest),
                       ("copy", str(src), dest, "--wandb-mode", "offline", "--wandb-dir", str(s.work / "offline"),
                        "--state-dir", str(s.work / ".trackport-offline")))
        assert list((s.work / "offline" / "wandb").glob("offline-run-*/*.wandb"))
        s.assert_no_leak_on_disk()
    finally:
        server.stop()


def test_wandb_key_from_netrc_stays_out_and_a_refused_key_is_not_echoed(tmp_path):
    s, server = _wandb_session(tmp_path, WANDB_KEY, in_env=False)
    try:
        src = corpus_export(s.work / "export")
        dest = "wandb://entity/corpus"
        s.run("copy", str(src), dest, "--wandb-dir", str(s.work / "wd"))
        assert server.rejected_auth == 0 and len(server.entities["entity"]["corpus"]) == len(CASES)
        s.run("export", dest, str(s.work / "back"))
        assert len(list((s.work / "back" / "data").rglob("*.parquet"))) == len(CASES)
        s.assert_no_leak_on_disk()
        # the server no longer takes the key: reading and writing fail without echoing it
        server.api_key = "wbk-" + "0" * 40
        # (the copy bounded: the sink's find_run retries a refused key as if it were transient)
        failed = s.run("export", dest, str(s.work / "back2"), expect=(1, 2))
        assert "WANDB_API_KEY" in failed.text() or "wandb login" in failed.text(), failed.text()[-2000:]
        s.run("copy", str(src), "wandb://entity/other", "--wandb-dir", str(s.work / "wd"),
              "--retry-max-attempts", "2", "--retry-max-seconds", "5", expect=(1, 2))
        s.assert_no_leak_on_disk()
    finally:
        server.stop()


# -- Neptune -----------------------------------------------------------------------------------
NEPTUNE_API_KEY = "nep-apikey-Rk4Wm9Qz2Lx7Tv5B"
T0 = 1_700_000_000_000


def _neptune_server() -> FakeNeptune:
    fake = FakeNeptune(api_key=NEPTUNE_API_KEY).start()
    fake.add("ws/proj", NeptuneRun(
        "PRJ-1", "run-a",
        atoms={"config/lr": ("float", 0.1), "sys/name": ("string", "first"),
               "model/ckpt": ("file", ("ws/proj/blob-1", b"weights", "application/octet-stream"))},
        metrics={"train/loss": [(T0 + i, float(i), 1.0 / (i + 1), False) for i in range(50)]},
        series={"logs/stdout": ("string_series", [(T0 + 1, 1.0, "epoch 1"), (T0 + 2, 2.0, "epoch 2")])}))
    fake.add("ws/proj", NeptuneRun("PRJ-2", "run-b", atoms={"config/lr": ("float", 0.2)},
                                   metrics={"train/loss": [(T0 + 9, 0.0, 0.5, False)]}))
    return fake


def test_neptune_token_and_the_key_inside_it_stay_out(tmp_path):
    fake = _neptune_server()
    try:
        token = fake.token()
        s = SecretRun(tmp_path, {"NEPTUNE_API_TOKEN": token, "api_key inside the token": NEPTUNE_API_KEY},
                      {"NEPTUNE_API_TOKEN": token, "NEPTUNE_QUERY_RETRY_SOFT_TIMEOUT": "1",
                       "NEPTUNE_QUERY_RETRY_HARD_TIMEOUT": "3"})
        src = "neptune3://ws/proj"
        exported = s.run("export", src, str(s.work / "export"))
        assert b"runs" in exported.stderr
        # and, at once: verify, plan, and Neptune destinations written offline with the token around
        s.run_together(("verify", src, f"parquet:{s.work / 'export'}"), ("plan", src, f"parquet:{s.work / 'other'}"),
                       ("copy", src, "neptune3://ws/dest", "--neptune-mode", "offline",
                        "--neptune-data-dir", str(s.work / "neptune-data")),
                       ("copy", src, "neptune2://ws/dest", "--neptune-mode", "offline",
                        "--neptune-data-dir", str(s.work / "neptune2-data"), "--state-dir", str(s.work / ".tp2")))
        assert any((s.work / "neptune-data").rglob("*"))
        assert any((s.work / "neptune2-data").rglob("*"))
        s.assert_no_leak_on_disk()
        # a token the server refuses: a usage error naming the variable, not the token
        wrong = fake.token(api_key="nep-wrongkey-Jd8Xc3Vb6Nm1")
        s.keys["refused token"] = key_forms(wrong)
        s.keys["refused key"] = key_forms("nep-wrongkey-Jd8Xc3Vb6Nm1")
        s.env["NEPTUNE_API_TOKEN"] = wrong
        refused = s.run("export", src, str(s.work / "export2"), expect=2)
        assert "NEPTUNE_API_TOKEN" in refused.text()
        s.assert_no_leak_on_disk()
    finally:
        fake.stop()


# -- Pluto -------------------------------------------------------------------------------------
PLUTO_KEY = "plt-planted-Vn3Xw8Ck5Tz1Qa7Y"


def _pluto_login(s: SecretRun, key: str) -> None:
    """Store `key` where `pluto login` keeps it: keyring's PlaintextKeyring file under HOME
    (pluto/auth.py `login`, pluto/query.py `_resolve_api_token`), written by keyring itself."""
    code = ("import keyring\nfrom keyrings.alt.file import PlaintextKeyring\n"
            "keyring.set_keyring(PlaintextKeyring())\nimport sys\n"
            "keyring.set_password('pluto', 'pluto', sys.stdin.read())\n")
    subprocess.run([sys.executable, "-c", code], input=key, text=True, env=s.env, check=True, timeout=60)
    stored = list(s.home.rglob("keyring_pass.cfg"))
    assert len(stored) == 1 and "[pluto]" in stored[0].read_text()
    s.planted.add(stored[0])


def test_pluto_key_from_the_environment_stays_out(tmp_path):
    server = PlutoTestServer(key=PLUTO_KEY).start()
    try:
        s = SecretRun(tmp_path, {"PLUTO_API_KEY": PLUTO_KEY}, server.env())
        src = corpus_export(s.work / "export")
        copied = s.run("copy", str(src), "pluto://proj")
        assert b"runs" in copied.stderr
        assert len(server.project_runs("proj")) == len(CASES)
        s.run_together(("verify", str(src), "pluto://proj"), ("export", "pluto://proj", str(s.work / "back")),
                       ("plan", str(src), "pluto://proj"))
        s.assert_no_leak_on_disk()
    finally:
        server.stop()


def test_pluto_key_from_pluto_login_stays_out_and_a_refused_key_is_not_echoed(tmp_path):
    server = PlutoTestServer(key=PLUTO_KEY).start()
    try:
        env = {k: v for k, v in server.env().items() if k != "PLUTO_API_KEY"}
        s = SecretRun(tmp_path, {"PLUTO_API_KEY": PLUTO_KEY}, env)
        _pluto_login(s, PLUTO_KEY)
        src = corpus_export(s.work / "export")
        s.run("copy", str(src), "pluto://proj")
        assert len(server.project_runs("proj")) == len(CASES)
        s.run("verify", str(src), "pluto://proj")
        s.assert_no_leak_on_disk()
        server.key = "plt-other-" + "9" * 20      # the stored key is refused now
        refused = s.run("copy", str(src), "pluto://other", expect=(1, 2))
        assert "401" in refused.text() and "PLUTO_API_KEY" in refused.text()
        s.assert_no_leak_on_disk()
    finally:
        server.stop()


# -- the scrubbers themselves, where an SDK puts a key into an exception text ---------------
def test_secrets_are_scrubbed_from_tracebacks_reports_and_the_ledger(tmp_path, monkeypatch):
    import logging

    from trackport.core.ledger import Ledger
    from trackport.core.logs import remember_secret, setup_logging
    from trackport.core.registry import redact
    from trackport.core.report import FAILED, CommandReport, RunReport

    env_key, stored_key, uri_password = "env-Key-8Hs2Lq0Pz4", "netrc-Key-3Jd9Wc1Xv7", "p@ss/Word-5Tn6"
    token = base64.b64encode(json.dumps({"api_address": "http://x", "api_key": "inner-Key-2Bm4Qa8Ze1"})
                             .encode()).decode()
    monkeypatch.setenv("SOME_TRACKER_API_KEY", env_key)
    monkeypatch.setenv("NEPTUNE_API_TOKEN", token)
    log_file = tmp_path / "debug.log"
    setup_logging(log_file)
    remember_secret(stored_key)      # what a connector does with a key read from ~/.netrc or a keyring
    shown = redact(f"mlflow+http://bob:{quote(uri_password, safe='')}@127.0.0.1:5000/")
    assert shown == "mlflow+http://127.0.0.1:5000/"
    secrets = [env_key, stored_key, uri_password, quote(uri_password, safe=""), token, "inner-Key-2Bm4Qa8Ze1"]
    log = logging.getLogger("trackport.test")
    try:
        raise RuntimeError(f"HTTP 401 for Authorization: Bearer {stored_key} ({env_key}, {uri_password})")
    except RuntimeError as exc:
        log.exception("run failed: %s", exc)
        failure = exc
    log.error("token %s holds inner-Key-2Bm4Qa8Ze1", token)
    report = CommandReport("copy", "parquet:x", "mlflow+http://127.0.0.1:5000")
    run = report.add(RunReport("p", "r", status=FAILED))
    run.error = f"run p/r: unexpected RuntimeError: {failure}"
    run.warn(f"read with {quote(uri_password, safe='')}")
    report.notes.append(f"note {stored_key}")
    ledger = Ledger(tmp_path / "state" / "ledger.sqlite")
    ledger.record("parquet:x", "mlflow+http://127.0.0.1:5000", run, 1)
    ledger.close()
    for handler in logging.getLogger().handlers:
        handler.flush()
    setup_logging(None)             # the debug file handler off again for the tests that follow
    artefacts = {"log": log_file.read_bytes(), "report": report.dumps().encode(),
                 "ledger": b"".join(p.read_bytes() for p in (tmp_path / "state").iterdir())}
    assert b"HTTP 401" in artefacts["log"] and b"Traceback" in artefacts["log"]
    assert "HTTP 401" in run.error and "***" in run.error
    for name, data in artefacts.items():
        assert leaks(data, {s: [s.encode()] for s in secrets}) == [], name
