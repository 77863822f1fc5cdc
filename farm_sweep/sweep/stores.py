"""Where a study's records live: the MLflow tracking store and the Optuna storage, each named by a URL.

By default both are SQLite files in the output folder. `--tracking-uri` may name an MLflow server
(`http://...`) or a database (`postgresql://USER@HOST:PORT/DB`), `--optuna-storage` a database. Before a
study starts, `check_tracking` and `check_optuna` make sure each answers: a server its health check; a
database the connection with its credentials, and its tables are current or can be created (under an
advisory lock, so two studies starting at once on a fresh database do not both create them).

Passwords stay in memory. A URL's password is kept by `remember` in this process, and travels to trials
with `secrets()` / `learn()`; whatever is written or printed carries the password-free form (`public`: the
output folder's records, Tune's pickled state, MLflow parameters) or shows it as `***` (`shown`, in
messages), and error texts pass through `scrub`. A password-free URL gets its password back from `reveal`;
where this process never saw one (a `--resume` or `export --register` without the URL), PostgreSQL's
client library finds it itself in PGPASSWORD or ~/.pgpass.
"""

from __future__ import annotations

import contextlib
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import optuna
import sqlalchemy
from mlflow import MlflowClient

SERVER_DATABASES = ("postgresql", "mysql", "mssql")  # databases behind a server: checked before a study starts
MASK = "***"
SCHEMA_LOCK = 0x6661726D  # "farm": the advisory lock held while a study creates or checks the stores' tables
CONNECT_TIMEOUT_S = 10
# Tables that tell each store's database apart: the two cannot share one, as both keep their schema's version
# in a table named alembic_version.
TABLES = {"MLflow": {"experiments", "runs"}, "Optuna": {"studies", "trials", "version_info"}}
PASSWORD_SOURCES = "in the URL, PGPASSWORD or ~/.pgpass"
_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^/\s:@]*:)[^@\s/]*@", re.IGNORECASE)

_known: dict[str, str] = {}  # public URL -> the URL with its password, for URLs given to this process


class StoreUnavailable(RuntimeError):
    """A store cannot be used; the message names the reason and the fix."""


class StoreLost(RuntimeError):
    """The Optuna storage stopped answering while the study ran."""


# ---------------------------------------------------------------------- credentials


def public(url: str) -> str:
    """The URL without its password: what is written anywhere."""
    return _with_password(url, None)


def shown(url: str) -> str:
    """The URL as messages show it: a password this process knows appears as ***."""
    return _with_password(reveal(url), MASK)


def remember(url: str) -> str:
    """Keep the URL's password in this process's memory; returns the public URL."""
    address = public(url)
    if address != url:
        _known[address] = url
    return address


def reveal(url: str) -> str:
    """The URL with the password this process was given for it (the URL itself when none was)."""
    return _known.get(url, url)


def secrets() -> dict[str, str]:
    """The passwords this process knows, to hand to a trial (in memory, never to disk)."""
    return dict(_known)


def learn(known: Mapping[str, str]) -> None:
    """Take the passwords `secrets()` handed over."""
    _known.update(known)


def scrub(text: str) -> str:
    """`text` without any password this process knows or that a URL in it carries."""
    for url in _known.values():
        password = urlsplit(url).password or ""
        for form in {password, unquote(password)} - {""}:
            text = text.replace(form, MASK)
    return _URL_PASSWORD.sub(rf"\g<1>{MASK}@", text)


def _with_password(url: str, password: str | None) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.netloc.rpartition("@")[0].split(":", 1)[0]
    host = parts.netloc.rpartition("@")[2]
    userinfo = user if password is None else f"{user}:{password}"
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{host}"))


# ---------------------------------------------------------------------- Optuna's storage


class OptunaStorage(optuna.storages.RDBStorage):
    """Optuna's RDBStorage, pickled with the public URL (Tune writes its searcher to the output folder) and
    given its password back by `reveal` when unpickled."""

    def __getstate__(self) -> dict[Any, Any]:
        return {**super().__getstate__(), "url": public(self.url)}

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__({**state, "url": reveal(state["url"])})


def optuna_storage(url: str) -> OptunaStorage:
    """The storage at `url` (public or not); a server's connections are tested before use, so a database
    that restarted is reconnected to."""
    full = reveal(url)
    return OptunaStorage(full, engine_kwargs={} if _backend(full) == "sqlite" else {"pool_pre_ping": True})


# ---------------------------------------------------------------------- checks before a study starts


def check_tracking(uri: str, timeout: float = 5.0) -> None:
    """StoreUnavailable unless MLflow can use `uri` (a server or a database; files are not checked)."""
    if uri.startswith(("http://", "https://")):
        _check_server(uri, timeout)
    elif _backend(uri) in SERVER_DATABASES:
        _check_database(uri, "MLflow", lambda: MlflowClient(reveal(uri)).search_experiments(max_results=1),
                        upgrade=f"mlflow db upgrade {public(uri)}", other="Optuna")


def check_optuna(url: str, study_name: str, new: bool) -> None:
    """StoreUnavailable unless Optuna can use the database `url`, and, for a new study, it holds no study of
    that name (a second study there under the same name would share its trials)."""
    if _backend(url) not in ("sqlite", *SERVER_DATABASES):
        raise StoreUnavailable("not a database URL; give postgresql://USER@HOST:PORT/DATABASE (the password "
                               f"{PASSWORD_SOURCES}) or sqlite:///PATH")
    if _backend(url) not in SERVER_DATABASES:
        return
    storage = _check_database(url, "Optuna", lambda: optuna_storage(url),
                              upgrade=f"optuna storage upgrade --storage {public(url)}", other="MLflow")
    if new and study_name in optuna.get_all_study_names(storage):
        raise StoreUnavailable(f"{shown(url)} already holds an Optuna study named {study_name!r}; rename the study "
                               "(its name field), or continue that study with --resume on its --output folder")


def probe(url: str) -> None:
    """StoreUnavailable at once when the database server of `url` does not accept a connection (other URLs:
    nothing to do)."""
    if _backend(url) in SERVER_DATABASES:
        engine, connection = _connect(url)
        connection.close()
        engine.dispose()


def _backend(url: str) -> str | None:
    """The database kind of an SQLAlchemy URL (postgresql, sqlite, ...); None for anything else."""
    try:
        return sqlalchemy.engine.make_url(url).get_backend_name()
    except (sqlalchemy.exc.ArgumentError, ValueError):
        return None


def _check_server(uri: str, timeout: float) -> None:
    try:
        with urllib.request.urlopen(f"{reveal(uri).rstrip('/')}/health", timeout=timeout) as response:
            if response.status == 200:
                return
            reason = f"HTTP {response.status}"
    except (urllib.error.URLError, OSError) as error:
        reason = scrub(str(getattr(error, "reason", error)))
    raise StoreUnavailable(f"no MLflow tracking server answers at {shown(uri)} ({reason}); start it (for example "
                           "`mlflow server --host 127.0.0.1 --port PORT`) or leave out --tracking-uri to use the "
                           "embedded store")


def _check_database(url: str, user: str, open_store: Callable[[], Any], upgrade: str, other: str) -> Any:
    """Connect with the URL's credentials, make sure the database is not the `other` store's, then open the
    store (which creates or checks its tables) under the advisory lock; returns the opened store."""
    engine, connection = _connect(url)
    try:
        with connection:
            if TABLES[other] <= set(sqlalchemy.inspect(connection).get_table_names()):
                raise StoreUnavailable(f"{shown(url)} holds {other}'s tables; give {user} a database of its own "
                                       "(both keep their schema's version in a table named alembic_version)")
            with _schema_lock(connection):
                try:
                    return open_store()
                except Exception as error:  # SQLAlchemy, MLflow and Optuna each raise their own types
                    reason = _reason(error)
                    fix = (f"back up the database, then run `{upgrade}`" if "upgrade" in reason else
                           "let the user create tables there (PostgreSQL 15 and later: GRANT CREATE ON SCHEMA "
                           "public TO the user, or a database the user owns)")
                    raise StoreUnavailable(f"{user} cannot set up its tables in {shown(url)}: {reason}; "
                                           f"{fix}") from None
    finally:
        engine.dispose()


def _connect(url: str) -> tuple[sqlalchemy.Engine, sqlalchemy.Connection]:
    full = reveal(url)
    try:
        engine = sqlalchemy.create_engine(full, poolclass=sqlalchemy.pool.NullPool, connect_args=_timeout(full))
        return engine, engine.connect()
    except (ImportError, sqlalchemy.exc.NoSuchModuleError) as error:
        raise StoreUnavailable(f"no database driver for {shown(url)} ({_reason(error)}); install it: "
                               "pip install 'farm-sweep[postgres]'") from None
    except sqlalchemy.exc.SQLAlchemyError as error:
        raise StoreUnavailable(f"cannot connect to {shown(url)}: {_reason(error)}; start the database server or "
                               f"correct the host, port, database, user or password ({PASSWORD_SOURCES})") from None


@contextlib.contextmanager
def _schema_lock(connection: sqlalchemy.Connection) -> Iterator[None]:
    """PostgreSQL's advisory lock SCHEMA_LOCK, held on `connection` for the block (other databases: none)."""
    if connection.dialect.name != "postgresql":
        yield
        return
    connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": SCHEMA_LOCK})
    try:
        yield
    finally:
        connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": SCHEMA_LOCK})


def _timeout(url: str) -> dict[str, Any]:
    return {"connect_timeout": CONNECT_TIMEOUT_S} if _backend(url) == "postgresql" else {}


def database_failure(error: BaseException) -> str | None:
    """The reason, when a database error (SQLAlchemy's) is among the causes of `error`; else None."""
    return _reason(error) if any(isinstance(e, sqlalchemy.exc.SQLAlchemyError) for e in _chain(error)) else None


def _reason(error: BaseException) -> str:
    """The first line of the database driver's own message (the first in the chain of causes that has one, else
    the error's), without passwords."""
    chain = _chain(error)
    cause = next((e.orig for e in chain if getattr(e, "orig", None) is not None), chain[0])
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    return scrub(lines[0] if lines else type(cause).__name__)[:300]


def _chain(error: BaseException) -> list[BaseException]:
    """`error` and its causes, explicit (`raise ... from`) or implicit (raised while handling another)."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain
