"""The runs of one origin, asked of an MLflow database store in one SQL query.

`MlflowSink` looks for the runs of a source run right after writing its completion mark
(and before resuming it).  MLflow's `search_runs` answers that look, but its SQL store
also loads every found run's params, tags and latest metrics through its ORM
(`SqlAlchemyStore._search_runs`, mlflow/store/tracking/sqlalchemy_store.py): several
queries per look, most of a small run's cost on PostgreSQL.  This query reads only the
`runs` and `tags` tables, whose columns used here (`runs.run_uuid`, `start_time`,
`experiment_id`, `lifecycle_stage`; `tags.key`, `value`, `run_uuid`) are the same in every
MLflow schema revision (mlflow/store/tracking/dbmodels/models.py `SqlRun`, `SqlTag`).

It imports SQLAlchemy (MLflow's own dependency) and never writes.
"""

from __future__ import annotations

from trackport.core.errors import TransientError


def origin_runs(engine, store: str, experiment_id: str, tag_key: str, tag_value: str,
                want: tuple[str, ...]) -> list[tuple[str, int, dict[str, str]]]:
    """Active runs of one experiment with tag `tag_key` = `tag_value`: (run_uuid, start_time,
    their tags named in `want`), asked of the store now.  The caller checks the tags exactly
    (MySQL compares strings without case).  A lost connection is a TransientError naming `store`."""
    import sqlalchemy

    key = engine.dialect.identifier_preparer.quote("key")     # KEY is a reserved word in MySQL
    query = sqlalchemy.text(
        f"SELECT r.run_uuid, r.start_time, t.{key}, t.value FROM tags o "
        f"JOIN runs r ON r.run_uuid = o.run_uuid JOIN tags t ON t.run_uuid = r.run_uuid "
        f"WHERE o.{key} = :tag_key AND o.value = :tag_value AND r.experiment_id = :experiment "
        f"AND r.lifecycle_stage = 'active' AND t.{key} IN :want"
    ).bindparams(sqlalchemy.bindparam("want", expanding=True))
    found: dict[str, tuple[int, dict[str, str]]] = {}
    try:
        with engine.connect() as conn:
            rows = conn.execute(query, {"tag_key": tag_key, "tag_value": tag_value,
                                        "experiment": int(experiment_id), "want": list(want)})
            for run_uuid, start, k, v in rows:
                found.setdefault(run_uuid, (int(start or 0), {}))[1][k] = v
    except sqlalchemy.exc.OperationalError as exc:
        raise TransientError(f"{store}: {driver_reason(exc)}") from None
    return [(run_uuid, start, tags) for run_uuid, (start, tags) in found.items()]


def driver_reason(exc: BaseException) -> str:
    """The driver's message without SQLAlchemy's echo of the statement and its parameters."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc)
    return text.splitlines()[0][:500] if text else type(exc).__name__
