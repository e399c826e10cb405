"""The only module importing the `zenml` package.

ZenML reads its configuration folder (ZENML_CONFIG_PATH) and local stores folder
(ZENML_LOCAL_STORES_PATH) from the environment and keeps both in process-wide singletons
(zenml/config/global_config.py GlobalConfiguration, zenml/client.py Client).  `connect`
sets them for the folder asked for and, when this process already talked to another folder,
resets the singletons (their `_reset_instance`, "meant for internal use and testing":
private API, hence the version range in the connector's spec).  Without a folder, ZenML's
own configuration is used as it is.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Iterator

# ZenML's client and its SQLite store are shared by the process: every call goes through this
# lock, so the pipeline's worker threads never run two store operations (or the first store
# creation and migration) at once.
_LOCK = threading.RLock()


def _serial(fn):
    import functools

    @functools.wraps(fn)
    def inner(*args, **kwargs):
        with _LOCK:
            return fn(*args, **kwargs)
    return inner
_CURRENT: list = [None]          # the folder the singletons were built for ("" = ZenML's default)


def connect(config_dir: Path | None):
    """A ZenML Client on the store of `config_dir` (its default local SQLite store)."""
    with _LOCK:
        os.environ.setdefault("ZENML_ANALYTICS_OPT_IN", "false")     # no usage reporting
        # ZenML logs to stdout ("Setting the global active stack to default."), which would break
        # `--json` output: only its errors are shown, and its first setup prints to stderr.
        os.environ.setdefault("ZENML_LOGGING_VERBOSITY", "ERROR")
        wanted = str(config_dir) if config_dir is not None else ""
        if config_dir is not None:
            os.environ["ZENML_CONFIG_PATH"] = str(config_dir)
            os.environ["ZENML_LOCAL_STORES_PATH"] = str(config_dir / "local_stores")
        from zenml.client import Client
        from zenml.config.global_config import GlobalConfiguration

        if _CURRENT[0] is not None and _CURRENT[0] != wanted:
            GlobalConfiguration._reset_instance()
            Client._reset_instance()
        _CURRENT[0] = wanted
        import contextlib
        import sys

        with contextlib.redirect_stdout(sys.stderr):
            found = Client()
            found.zen_store       # opens (and on first use creates and migrates) the store, once
            found.active_stack_model
        return found


@_serial
def store_url(client) -> str:
    return str(client.zen_store.url)


@_serial
def get_model(client, name: str):
    try:
        return client.get_model(name)
    except KeyError:
        return None


@_serial
def ensure_model(client, name: str):
    found = get_model(client, name)
    if found is not None:
        return found
    try:
        return client.create_model(name=name, description="runs copied by trackport")
    except Exception:             # another writer created it meanwhile (EntityExistsError)
        found = get_model(client, name)
        if found is None:
            raise
        return found


@_serial
def get_version(client, model: str, version_name: str):
    """The model version, hydrated (run metadata, tags), or None."""
    try:
        return client.get_model_version(model, version_name)
    except KeyError:
        return None


@_serial
def create_version(client, model: str, version_name: str, description: str, tags: list[str]):
    return client.create_model_version(model, name=version_name, description=description, tags=tags or None)


@_serial
def add_tags(client, model: str, version_id, tags: list[str]) -> None:
    if tags:
        client.update_model_version(model, version_id, add_tags=tags)


@_serial
def log_metadata(version_id, metadata: dict[str, Any]) -> None:
    from zenml import log_metadata as _log

    _log(metadata=metadata, model_version_id=version_id)


@_serial
def list_models(client) -> list[str]:
    return sorted(m.name for m in _pages(lambda page: client.list_models(page=page, size=100)))


@_serial
def list_versions(client, model: str) -> list:
    """Every version of `model`, hydrated (run metadata)."""
    return list(_pages(lambda page: client.list_model_versions(model=model, page=page, size=100,
                                                               hydrate=True)))


def _pages(fetch) -> Iterator:
    page = 1
    while True:
        got = fetch(page)
        yield from got.items
        if page >= got.total_pages:
            return
        page += 1


@_serial
def save_run_artifact(client, folder: Path, name: str, model: str, version_id) -> str:
    """Save `folder` as a new version of artifact `name` (ZenML's PathMaterializer), linked to
    the model version; its id."""
    from zenml import save_artifact
    from zenml.model.utils import link_artifact_version_to_model_version

    artifact = save_artifact(folder, name=name, tags=["trackport"], include_visualizations=False)
    version = client.get_model_version(model, version_id)
    link_artifact_version_to_model_version(artifact_version=artifact, model_version=version)
    return str(artifact.id)


@_serial
def artifact_versions(client, name: str) -> list[str]:
    return [str(a.id) for a in _pages(lambda page: client.list_artifact_versions(name=name, page=page,
                                                                                 size=100))]


@_serial
def delete_artifact_version(client, artifact_id: str) -> None:
    client.delete_artifact_version(artifact_id, delete_metadata=True, delete_from_artifact_store=True)


@_serial
def load_run_artifact(client, artifact_id: str) -> Path:
    """The artifact's folder, extracted by ZenML into a temporary folder of its own (the
    caller removes it)."""
    return Path(client.get_artifact_version(artifact_id).load())
