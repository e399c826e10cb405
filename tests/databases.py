"""Uniquely named databases on this machine's PostgreSQL and MariaDB/MySQL servers.

`database(kind)` makes an empty database (`CREATE DATABASE tp_<prefix>_<hex>`) on the
local server and returns its SQLAlchemy URI and a `drop()`; where the server cannot be
reached (or its driver is not installed) the test is skipped with the reason, so CI
machines without the servers skip plainly instead of failing.  Servers: PostgreSQL on
127.0.0.1:5432 (trust auth, user postgres, database `test`), MariaDB on 127.0.0.1:3306
(root, empty password).
"""

from __future__ import annotations

import uuid
from typing import Callable

import pytest

ADMIN = {"postgresql": "postgresql+psycopg2://postgres@127.0.0.1:5432/test",
         "mysql": "mysql+pymysql://root@127.0.0.1:3306/"}
SERVER = {"postgresql": "PostgreSQL not reachable on 127.0.0.1:5432",
          "mysql": "MariaDB/MySQL not reachable on 127.0.0.1:3306"}
URI = {"postgresql": "postgresql+psycopg2://postgres@127.0.0.1:5432/{name}",
       "mysql": "mysql+pymysql://root@127.0.0.1:3306/{name}"}


def database(kind: str, prefix: str = "tp") -> tuple[str, Callable[[], None]]:
    """A uniquely named, empty database on the local server; (SQLAlchemy URI, drop())."""
    import sqlalchemy

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    try:
        engine = sqlalchemy.create_engine(ADMIN[kind], isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
    except (ImportError, sqlalchemy.exc.SQLAlchemyError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        pytest.skip(f"{SERVER[kind]}: {type(exc).__name__}: {reason[0] if reason else ''}")
    uri = URI[kind].format(name=name)

    def drop() -> None:
        sqlalchemy.create_engine(uri).dispose()
        with engine.connect() as conn:
            if kind == "postgresql":
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            else:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        engine.dispose()

    return uri, drop
