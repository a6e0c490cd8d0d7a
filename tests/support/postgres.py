"""Throwaway PostgreSQL server for the test-suite.

``start_postgres(base_dir)`` initialises a fresh cluster, starts it on a free
port on 127.0.0.1 (durability switched off, so it is fast) and returns a
:class:`PgServer`.  ``PgServer.stop()`` kills it again.

If the environment variable ``TOKENPORT_TEST_PG_URL`` is set, no server is
started: the tests use that server instead, and ``create_database`` creates
(and ``stop`` drops) its databases there.

PostgreSQL refuses to run as root, so when the tests run as root the server
runs as the ``postgres`` system user (created if missing) via ``runuser``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy.engine import URL, make_url

ENV_URL = "TOKENPORT_TEST_PG_URL"
TEST_DB = "tokenport_test"
PG_USER = "postgres"
READY_TIMEOUT_S = 30.0
_REQUIRED = ("initdb", "pg_ctl", "postgres")
# Unix socket paths are limited to ~107 bytes; keep a margin for "/.s.PGSQL.NNNNN".
_MAX_SOCKET_DIR_LEN = 85


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server binaries are not installed."""


def find_pg_bindir() -> Path | None:
    """Directory holding initdb/pg_ctl/postgres: from PATH first, then the newest
    /usr/lib/postgresql/<version>/bin.  Symlinks are resolved so that all the tools
    come from the same installation."""
    candidates: list[Path] = []
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)

    def version_key(p: Path) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", p.parent.name)) or (0,)

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version_key, reverse=True)
    for d in candidates:
        if all(os.access(d / tool, os.X_OK) for tool in _REQUIRED):
            return d
    return None


def _to_psycopg_url(url: str | URL) -> URL:
    u = make_url(url)
    if u.get_backend_name() != "postgresql":
        raise ValueError(f"not a PostgreSQL URL: {u!r}")
    return u.set(drivername="postgresql+psycopg")


def _connect(url: URL, **kwargs) -> psycopg.Connection:
    params = {
        "host": url.host,
        "port": url.port,
        "user": url.username,
        "password": url.password,
        "dbname": url.database,
        **{k: v for k, v in url.query.items() if isinstance(v, str)},
    }
    return psycopg.connect(**{k: v for k, v in params.items() if v is not None}, **kwargs)


@dataclass
class PgServer:
    """A PostgreSQL server for tests.  URLs are SQLAlchemy URL strings."""

    url: str
    admin_url: str
    port: int | None = None
    data_dir: Path | None = None
    log_file: Path | None = None
    external: bool = False
    _pg_ctl: list[str] = field(default_factory=list, repr=False)
    _cwd: Path | None = field(default=None, repr=False)
    _cleanup_dir: Path | None = field(default=None, repr=False)
    _created: list[str] = field(default_factory=list, repr=False)
    _stopped: bool = field(default=False, repr=False)

    def create_database(self, name: str) -> str:
        """Create a fresh, empty database called ``name``; return its URL."""
        with _connect(make_url(self.admin_url), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self._created.append(name)
        return make_url(self.admin_url).set(database=name).render_as_string(hide_password=False)

    def crash(self) -> None:
        """Stop at once, as a crash would (`-m immediate`); `restart` brings it back on its port."""
        assert not self.external and self.data_dir is not None
        subprocess.run(
            [*self._pg_ctl, "stop", "-D", str(self.data_dir), "-m", "immediate", "-w"],
            cwd=self._cwd,
            capture_output=True,
            check=True,
        )

    def restart(self) -> None:
        assert not self.external and self.data_dir is not None
        wait = ["-w", "-t", str(int(READY_TIMEOUT_S))]
        subprocess.run(
            [
                *self._pg_ctl,
                "start",
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_file),
                *wait,
                "-o",
                f"-p {self.port}",
            ],
            cwd=self._cwd,
            capture_output=True,
            check=True,
        )

    def stop(self) -> None:
        """Stop the throwaway server (``pg_ctl stop -m immediate``).  For a server
        given by TOKENPORT_TEST_PG_URL, drop the databases created on it instead."""
        if self._stopped:
            return
        self._stopped = True
        if self.external:
            self._drop_created()
            return
        subprocess.run(
            [*self._pg_ctl, "stop", "-D", str(self.data_dir), "-m", "immediate", "-w"],
            cwd=self._cwd,
            capture_output=True,
            check=False,
        )
        if self._cleanup_dir is not None:
            shutil.rmtree(self._cleanup_dir, ignore_errors=True)

    def _drop_created(self) -> None:
        with contextlib.suppress(psycopg.Error), _connect(make_url(self.admin_url), autocommit=True) as conn:
            for name in self._created:
                with contextlib.suppress(psycopg.Error):
                    conn.execute(
                        sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                    )
        self._created.clear()


def start_postgres(base_dir: Path) -> PgServer:
    """Start a throwaway PostgreSQL server with its files under ``base_dir``
    (or return the server named by TOKENPORT_TEST_PG_URL).

    Raises :class:`PostgresUnavailable` when the binaries are not installed."""
    if env_url := os.environ.get(ENV_URL):
        url = _to_psycopg_url(env_url)
        server = PgServer(
            url=url.render_as_string(hide_password=False),
            admin_url=url.set(database="postgres").render_as_string(hide_password=False),
            external=True,
        )
        _wait_until_ready(url)
        atexit.register(server.stop)
        return server

    bindir = find_pg_bindir()
    if bindir is None:
        raise PostgresUnavailable(
            "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH or in "
            "/usr/lib/postgresql/*/bin; run scripts/ensure-postgres or set " + ENV_URL
        )

    as_root = os.geteuid() == 0
    if as_root:
        _ensure_postgres_user()
    root, cleanup_dir = _server_root(Path(base_dir), as_root)
    prefix = ["runuser", "-u", PG_USER, "--"] if as_root else []
    data_dir, sock_dir, log_file = root / "data", root / "sock", root / "postgres.log"
    _mkdir_owned(sock_dir, as_root)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*prefix, *args], cwd=root, capture_output=True, text=True, check=False)

    _initdb(run, bindir, data_dir)
    with (data_dir / "postgresql.conf").open("a") as f:
        sock = str(sock_dir).replace("'", "''")
        f.write(
            "\n# tokenport test server\n"
            "listen_addresses = '127.0.0.1'\n"
            f"unix_socket_directories = '{sock}'\n"
            "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
            "max_connections = 200\n"
        )

    server = PgServer(
        url="",
        admin_url="",
        data_dir=data_dir,
        log_file=log_file,
        _pg_ctl=[*prefix, str(bindir / "pg_ctl")],
        _cwd=root,
        _cleanup_dir=cleanup_dir,
    )
    last_error = ""
    for _attempt in range(3):  # another process may grab the free port before we bind it
        port = _free_port()
        res = run(
            str(bindir / "pg_ctl"),
            "start",
            "-D",
            str(data_dir),
            "-l",
            str(log_file),
            "-w",
            "-t",
            str(int(READY_TIMEOUT_S)),
            "-o",
            f"-p {port}",
        )
        if res.returncode == 0:
            break
        last_error = res.stdout + res.stderr + _tail(log_file)
        run(str(bindir / "pg_ctl"), "stop", "-D", str(data_dir), "-m", "immediate")
    else:
        server.stop()
        raise RuntimeError(f"could not start PostgreSQL:\n{last_error}")

    admin = URL.create(
        "postgresql+psycopg", username=PG_USER, host="127.0.0.1", port=port, database="postgres"
    )
    server.port = port
    server.admin_url = admin.render_as_string(hide_password=False)
    atexit.register(server.stop)  # safety net; the fixture normally stops it
    try:
        _wait_until_ready(admin)
        server.url = server.create_database(TEST_DB)
    except BaseException:
        server.stop()
        raise
    return server


def _initdb(run, bindir: Path, data_dir: Path) -> None:
    common = [
        str(bindir / "initdb"),
        "-D",
        str(data_dir),
        "-U",
        PG_USER,
        "--auth=trust",
        "--encoding=UTF8",
        "--no-sync",
    ]
    res = run(*common, "--locale=C.UTF-8")
    if res.returncode != 0:  # C.UTF-8 is not available everywhere; fall back to plain C
        run("rm", "-rf", str(data_dir))
        res = run(*common, "--no-locale")
    if res.returncode != 0:
        raise RuntimeError(f"initdb failed:\n{res.stdout}{res.stderr}")


def _ensure_postgres_user() -> None:
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                PG_USER,
            ],
            check=True,
        )
    if shutil.which("runuser") is None:
        raise RuntimeError("running as root needs `runuser` (util-linux) to start PostgreSQL")


def _mkdir_owned(path: Path, as_root: bool) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if as_root:
        pw = pwd.getpwnam(PG_USER)
        os.chown(path, pw.pw_uid, pw.pw_gid)


def _server_root(base_dir: Path, as_root: bool) -> tuple[Path, Path | None]:
    """Directory for the cluster.  Normally a new ``base_dir/pg-*``; a short directory in the
    system temp dir (removed on stop) when ``base_dir`` can't be used: the socket path
    would be too long, or, as root, the postgres user can't reach it (pytest's
    tmp_path_factory directories are mode 0700 and owned by root)."""
    base_dir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="pg-", dir=base_dir.resolve()))
    _mkdir_owned(root, as_root)
    usable = len(str(root / "sock")) <= _MAX_SOCKET_DIR_LEN
    if usable and as_root:
        probe = subprocess.run(["runuser", "-u", PG_USER, "--", "test", "-w", str(root)], check=False)
        usable = probe.returncode == 0
    if usable:
        return root, None
    tmp = Path(tempfile.mkdtemp(prefix="tokenport-pg-", dir="/tmp" if os.path.isdir("/tmp") else None))
    _mkdir_owned(tmp, as_root)
    return tmp, tmp


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_ready(url: URL, timeout: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with _connect(url, connect_timeout=5) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL at {url!r} not accepting connections: {exc}") from exc
            time.sleep(0.2)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
