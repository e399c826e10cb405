"""The only module of the offline source and the sink that imports `wandb` (always lazily).

pluto-ml trap (docs/wandb.md, 'The pluto-ml trap'): pluto-ml installs `zzzz_pluto_wandb_hook.pth`,
which puts `pluto._wandb_hook._PlutoWandbFinder` on `sys.meta_path`; when `wandb` is
imported with Pluto credentials around (PLUTO_API_KEY, `pluto login`), it replaces
`wandb.init/log/finish` by versions that also log to Pluto
(pluto/compat/wandb.py `apply_wandb_patches`).  `import_wandb()` removes that finder
before wandb is imported, restores the originals if wandb was patched already, and
refuses to go on if it cannot; the sink also calls `wandb.sdk.wandb_init.init`
itself rather than the module attribute.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

from trackport.core.errors import MissingExtraError, UsageError

log = logging.getLogger(__name__)

_PLUTO_FINDER = "_PlutoWandbFinder"


def _is_pluto_finder(finder: Any) -> bool:
    kind = type(finder)
    return kind.__name__ == _PLUTO_FINDER and kind.__module__.startswith("pluto")


def remove_pluto_hook() -> int:
    """Take pluto's wandb import hook off sys.meta_path; how many were removed."""
    before = len(sys.meta_path)
    sys.meta_path[:] = [f for f in sys.meta_path if not _is_pluto_finder(f)]
    return before - len(sys.meta_path)


def _patched(wandb) -> list[str]:
    from wandb.sdk import wandb_init

    bad = []
    if wandb.init is not wandb_init.init:
        bad.append("init")
    for name in ("log", "finish"):
        fn = getattr(wandb, name, None)
        if getattr(fn, "__module__", "").startswith("pluto"):
            bad.append(name)
    return bad


def import_wandb():
    """`wandb`, imported without pluto's dual-logging patch (restored or refused)."""
    remove_pluto_hook()
    try:
        import wandb
    except ImportError as exc:  # pragma: no cover - the extra is installed in tests
        raise MissingExtraError("the W&B connector needs wandb: pip install 'trackport[wandb]'") from exc
    bad = _patched(wandb)
    if bad:
        compat = sys.modules.get("pluto.compat.wandb")
        if compat is not None and hasattr(compat, "restore_wandb"):
            compat.restore_wandb()
        bad = _patched(wandb)
        if bad:
            raise UsageError(
                f"wandb.{', wandb.'.join(bad)} is patched by another package (pluto-ml's dual-logging "
                "hook?), which would send this copy elsewhere too; run trackport in a fresh process "
                "or without that package's hook")
    return wandb


def internal_pb2():
    """`wandb.proto.wandb_internal_pb2` (the Record protobufs of `.wandb` files)."""
    import_wandb()
    from wandb.proto import wandb_internal_pb2

    return wandb_internal_pb2


def wandb_init(**kwargs):
    """The SDK's own `wandb.init` (never a wrapper someone put on the module)."""
    import_wandb()
    from wandb.sdk.wandb_init import init

    return init(**kwargs)


def new_artifact(name: str, kind: str, description: str | None, metadata: dict | None):
    """A `wandb.Artifact` to fill and log (sink.py, `_log_artifact`)."""
    return import_wandb().Artifact(name, type=kind, description=description, metadata=metadata)


_START_MS: dict[str, int] = {}     # run id -> the start its run record must carry, in ms
_START_LOCK = threading.Lock()


def _install_start_time_hook() -> None:
    """Make the run record of a run given a start (`start_times`) carry that start.

    wandb 0.31 offers no start-time setting that reaches the run: `wandb.init` overwrites
    `settings.x_start_time` with `time.time()` (wandb/sdk/wandb_init.py:335), `Run.__init__`
    sets `self._start_time = time.time()` (wandb/sdk/wandb_run.py:552, "TODO: eventually would
    be nice to make this configurable"), and every run record is built from `run._start_time`
    by `InterfaceBase._make_run` (wandb/sdk/interface/interface.py:232).  So `_make_run` is
    wrapped, once per process: for a run id in `_START_MS` the record's `start_time` is set
    after the SDK built it; every other run is left as the SDK makes it."""
    from wandb.sdk.interface.interface import InterfaceBase

    original = InterfaceBase._make_run
    if getattr(original, "_trackport_start_time", False):
        return

    def _make_run(self, run):
        record = original(self, run)
        with _START_LOCK:
            ms = _START_MS.get(record.run_id)
        if ms is not None:
            record.start_time.FromMilliseconds(ms)
            run._start_time = ms / 1000
        return record

    _make_run._trackport_start_time = True
    InterfaceBase._make_run = _make_run


def set_start_time(run_id: str, ms: int) -> None:
    """Until `forget_start_time(run_id)`, every record of run `run_id` carries its start at `ms`
    (epoch milliseconds) instead of the time of `wandb.init`."""
    import_wandb()
    _install_start_time_hook()
    with _START_LOCK:
        _START_MS[run_id] = ms


def forget_start_time(run_id: str) -> None:
    with _START_LOCK:
        _START_MS.pop(run_id, None)


def current_base_url() -> str | None:
    """WANDB_BASE_URL as it is NOW.

    wandb reads its environment once per process (the `wandb.setup()` singleton,
    wandb/sdk/wandb_init.py `warn_env_vars_change_after_setup`: later changes "will be
    ignored"), so the sink and `find_online_run` pass the server explicitly: a second
    copy in the same process (library use, tests) goes where the environment says.
    """
    import os

    return (os.environ.get("WANDB_BASE_URL") or "").strip().rstrip("/") or None


def settings(**kwargs):
    wandb = import_wandb()
    if kwargs.get("mode") == "online" and "base_url" not in kwargs and current_base_url():
        kwargs["base_url"] = current_base_url()
    return wandb.Settings(**kwargs)


def histogram(counts: list[float], edges: list[float]):
    """A `wandb.Histogram` from counts and bin edges (at most 512 bins)."""
    wandb = import_wandb()
    return wandb.Histogram(np_histogram=(list(counts), list(edges)))


def find_online_run(entity: str, project: str, run_id: str) -> dict | None:
    """The config of W&B run ENTITY/PROJECT/RUN_ID on the server, None when it does not exist.

    Read-only (`wandb.Api().run`, the GraphQL `Run` query); tested against the local
    server of tests/wandb_server.py (tests/test_wandb_online.py).
    """
    wandb = import_wandb()
    from trackport.core.errors import TransientError

    base = current_base_url()
    try:
        api = wandb.Api(overrides={"base_url": base} if base else None)
        run = api.run(f"{entity}/{project}/{run_id}")
    except wandb.errors.CommError as exc:
        # wandb.Api() checks the key first and raises AuthenticationError when the server
        # "rejects the credentials or cannot be reached" (wandb/sdk/wandb_login.py
        # `_verify_login`): the HTTP status behind it tells a refused key from a 5xx.
        from .api import classify, status_of

        error = classify(exc)
        if isinstance(error, (TransientError, UsageError)):
            raise error from None
        text = str(exc).lower()
        if isinstance(exc, wandb.errors.AuthenticationError):
            raise UsageError(f"W&B refused the credentials for {base or 'the W&B cloud'}; set WANDB_API_KEY "
                             f"to a valid key or run `wandb login`") from None
        if status_of(exc) == 404 or "not found" in text or "could not find" in text:
            return None
        raise TransientError(f"W&B API: {type(exc).__name__}") from None
    except ValueError:
        return None
    return dict(run.config or {})


def mark_online_run(entity: str, project: str, run_id: str, key: str, value: Any) -> None:
    """Set config KEY = VALUE on the (finished) W&B run ENTITY/PROJECT/RUN_ID.

    `wandb.Api().run(...)` then `Run.update()` (wandb/apis/public/runs.py): one
    `UpsertBucket` with the run's whole config, then its summary written back unchanged.
    """
    wandb = import_wandb()
    base = current_base_url()
    api = wandb.Api(overrides={"base_url": base} if base else None)
    run = api.run(f"{entity}/{project}/{run_id}")
    run.config[key] = value
    run.update()


def _public_api():
    wandb = import_wandb()
    base = current_base_url()
    return wandb, wandb.Api(overrides={"base_url": base} if base else None)


def logged_version(entity: str, project: str, run_id: str, name: str, digest: str):
    """The artifact version NAME with DIGEST that W&B run ENTITY/PROJECT/RUN_ID logged (a
    `wandb.Artifact` of the public API), None when that run or version is not there.

    `wandb.Api().run(...)` then `run.logged_artifacts()` (GraphQL `Run`, `RunOutputArtifacts`):
    the carrying run of a version's entry is where the sink logged it (sink.py, `_log_artifact`)."""
    wandb, api = _public_api()
    try:
        run = api.run(f"{entity}/{project}/{run_id}")
    except (ValueError, wandb.errors.CommError) as exc:
        from .api import status_of

        text = str(exc).lower()
        if isinstance(exc, ValueError) or status_of(exc) == 404 or "not found" in text or "could not find" in text:
            return None
        raise
    for art in run.logged_artifacts():
        if art.digest == digest and art.source_name.split(":")[0] == name:
            return art
    return None


def record_use(entity: str, project: str, run_id: str, artifact) -> None:
    """Record W&B run ENTITY/PROJECT/RUN_ID (finished or not) as a user of ARTIFACT, a version
    of the public API: `wandb.Api().run(...).use_artifact(artifact)` (wandb/apis/public/runs.py:1489,
    the `UseArtifact` mutation that `wandb.Run.use_artifact` sends too, wandb/sdk/wandb_run.py:3158)."""
    _wandb, api = _public_api()
    api.run(f"{entity}/{project}/{run_id}").use_artifact(artifact)
