"""A throwaway PostgreSQL server for tests: Debian's binaries (``apt-get install postgresql``),
a fresh cluster in a temp dir, listening on 127.0.0.1 at a free port, trust auth, stopped and
deleted afterwards. Used by the ``postgres_url`` fixture in ``conftest.py``."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path


class Unavailable(Exception):
    """The server cannot run here; the message says why (the fixture skips with it)."""


def find_bin_dir() -> Path:
    """The newest ``/usr/lib/postgresql/*/bin`` with ``initdb`` and ``pg_ctl``, else the PATH."""
    found = sorted(
        (Path(d) for d in glob.glob("/usr/lib/postgresql/*/bin")),
        key=lambda p: [int(x) if x.isdigit() else 0 for x in p.parent.name.split(".")],
    )
    for d in reversed(found):
        if (d / "initdb").is_file() and (d / "pg_ctl").is_file():
            return d
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl:
        return Path(initdb).parent
    raise Unavailable("no initdb/pg_ctl under /usr/lib/postgresql/*/bin or on PATH")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def postgres_server(database: str = "tests") -> Iterator[str]:
    """Start a cluster and yield ``postgresql://postgres@127.0.0.1:PORT/DATABASE``.

    PostgreSQL refuses to run as root, so as root the cluster belongs to the ``postgres``
    user and its commands run through ``runuser``. Raises :class:`Unavailable` when the
    driver, the binaries or the server are missing or do not start."""
    try:  # the driver SQLAlchemy picks for postgresql:// (psycopg 3 from SQLAlchemy 2.1)
        from sqlalchemy.engine import make_url

        make_url("postgresql://").get_dialect().import_dbapi()
    except ImportError as exc:
        raise Unavailable(
            f"no driver for postgresql:// URLs ({exc}); pip install -e '.[dev]'"
        ) from None
    bindir = find_bin_dir()
    prefix: list[str] = []
    owner: tuple[int, int] | None = None
    if os.geteuid() == 0:
        import pwd

        runuser = shutil.which("runuser")
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            raise Unavailable("running as root and there is no 'postgres' user") from None
        if runuser is None:
            raise Unavailable("running as root and there is no runuser to drop to 'postgres'")
        prefix, owner = [runuser, "-u", "postgres", "--"], (pw.pw_uid, pw.pw_gid)

    # directly under the temp root (pytest's own temp dirs are 0700 root-only), and short:
    # the unix socket path must fit in ~100 bytes
    tmp = Path(tempfile.mkdtemp(prefix="agegender-pg-"))
    data, log = tmp / "data", tmp / "server.log"
    started = False

    def run(*args: str, timeout: float = 120) -> str:
        try:
            proc = subprocess.run(
                [*prefix, *args],
                cwd=tmp,
                capture_output=True,
                text=True,
                timeout=timeout,
                env={**os.environ, "LC_ALL": "C", "LANG": "C"},
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise Unavailable(f"{Path(args[0]).name}: {exc}") from None
        if proc.returncode != 0:
            out = (proc.stdout + proc.stderr).strip()
            if log.is_file():
                out += "\n" + log.read_text(errors="replace")[-2000:]
            tail = " | ".join(out.splitlines()[-4:])
            raise Unavailable(f"{Path(args[0]).name} exited {proc.returncode}: {tail}")
        return proc.stdout

    try:
        if owner is not None:
            os.chown(tmp, *owner)
        flags = ["-U", "postgres", "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"]
        run(str(bindir / "initdb"), "-D", str(data), *flags)
        pg_ctl = [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60"]
        for attempt in range(3):  # another process may take the free port before the server
            port = free_port()
            opts = f"-h 127.0.0.1 -p {port} -k {tmp} -c fsync=off -c synchronous_commit=off"
            try:
                run(*pg_ctl, "-o", opts, "start")
                started = True
                break
            except Unavailable:
                if attempt == 2:
                    raise
        run(
            str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", database
        )
        yield f"postgresql://postgres@127.0.0.1:{port}/{database}"
    finally:
        if started:
            stop = [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]
            with suppress(OSError, subprocess.TimeoutExpired):
                subprocess.run(stop, cwd=tmp, capture_output=True, timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)
