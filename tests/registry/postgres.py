"""A throwaway local PostgreSQL server for the registry tests, run from the ``postgresql`` package's binaries.

The server lives in a temporary folder, listens on a free loopback port with trust authentication, and is
stopped (``pg_ctl stop -m immediate``) and deleted by ``stop()`` or on leaving a ``with`` block. PostgreSQL
refuses to run as root, so under root the binaries run as an existing unprivileged user (``postgres``, else
``nobody``) through ``runuser`` or ``setpriv``.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import tempfile
from pathlib import Path

SUPERUSER = "tunelab"
HOST = "127.0.0.1"
START_TIMEOUT_S = 60


def _version_key(bin_dir: str) -> tuple[int, ...]:
    """``/usr/lib/postgresql/15/bin`` -> ``(15,)``; directories without a numeric version sort first."""
    name = Path(bin_dir).parent.name
    return tuple(int(part) for part in re.findall(r"\d+", name)) or (-1,)


def find_binaries() -> tuple[str, str] | None:
    """``(initdb, pg_ctl)``: from PATH first, else from the highest ``/usr/lib/postgresql/*/bin``; None if absent."""
    initdb = shutil.which("initdb")
    if initdb:
        # Prefer the pg_ctl next to initdb (the same version), then whatever PATH gives.
        beside = Path(os.path.realpath(initdb)).parent / "pg_ctl"
        pg_ctl = str(beside) if os.access(beside, os.X_OK) else shutil.which("pg_ctl")
        if pg_ctl:
            return initdb, pg_ctl
    for bin_dir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True):
        initdb, pg_ctl = os.path.join(bin_dir, "initdb"), os.path.join(bin_dir, "pg_ctl")
        if os.access(initdb, os.X_OK) and os.access(pg_ctl, os.X_OK):
            return initdb, pg_ctl
    return None


def _unprivileged_user() -> pwd.struct_passwd | None:
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    return None


def _drop_privileges_prefix(user: pwd.struct_passwd) -> list[str] | None:
    """The command prefix that runs a program as ``user`` (we are root), or None if no tool for it exists."""
    runuser = shutil.which("runuser") or next((p for p in ("/usr/sbin/runuser", "/sbin/runuser")
                                                if os.access(p, os.X_OK)), None)
    if runuser:
        return [runuser, "-u", user.pw_name, "--"]
    setpriv = shutil.which("setpriv")
    if setpriv:
        return [setpriv, f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", "--"]
    return None


def _traversable_by_others(path: Path) -> bool:
    """Whether every folder from ``/`` down to ``path`` lets any user pass through (o+x)."""
    path = path.resolve()
    return all(os.stat(p).st_mode & stat.S_IXOTH for p in [path, *path.parents])


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class ThrowawayPostgres:
    """One PostgreSQL server in a temporary folder; ``create_database(name)`` gives a SQLAlchemy URL."""

    def __init__(self) -> None:
        self.port: int | None = None
        self.base: Path | None = None
        self._binaries = find_binaries()
        self._prefix: list[str] = []
        self._owner: pwd.struct_passwd | None = None
        self._running = False

    # -- availability -------------------------------------------------------------------------------------

    @staticmethod
    def unavailable_reason() -> str | None:
        """None when a server can be started here, else why not (in words)."""
        if find_binaries() is None:
            return ("PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in /usr/lib/postgresql/*/bin;"
                    " install the Debian package 'postgresql' (make system-deps)")
        if os.geteuid() == 0:
            user = _unprivileged_user()
            if user is None:
                return "running as root and no unprivileged user ('postgres' or 'nobody') to run PostgreSQL as"
            if _drop_privileges_prefix(user) is None:
                return "running as root and neither runuser nor setpriv exists to run PostgreSQL unprivileged"
        return None

    @classmethod
    def available(cls) -> bool:
        return cls.unavailable_reason() is None

    # -- lifecycle ----------------------------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base / "socket"

    @property
    def log_file(self) -> Path:
        return self.base / "server.log"

    def start(self) -> ThrowawayPostgres:
        reason = self.unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        initdb, _ = self._binaries
        self._make_folder()
        try:
            self._run([initdb, "-D", str(self.data_dir), "-A", "trust", "-U", SUPERUSER, "--no-sync",
                       "-E", "UTF8", "--locale=C"], "initdb")
            for attempt in range(2):
                self.port = _free_port()
                try:
                    self._pg_ctl_start()
                    break
                except RuntimeError:
                    # Another process may have taken the port between our probe and the server's bind.
                    if attempt == 0 and "already in use" in self._log_tail():
                        continue
                    raise
            self._running = True
        except BaseException:
            self.stop()
            raise
        atexit.register(self.stop)
        return self

    def stop(self) -> None:
        """Stop the server at once (no checkpoint: the data is thrown away) and delete its folder."""
        if self.base is None:
            return
        try:
            if self._running or (self.data_dir / "postmaster.pid").exists():
                _, pg_ctl = self._binaries
                subprocess.run(self._prefix + [pg_ctl, "-D", str(self.data_dir), "-m", "immediate", "-w",
                                               "-t", str(START_TIMEOUT_S), "stop"],
                               cwd=self.base, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                               check=False)
        finally:
            self._running = False
            shutil.rmtree(self.base, ignore_errors=True)
            self.base = None
            atexit.unregister(self.stop)

    def __enter__(self) -> ThrowawayPostgres:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- databases ----------------------------------------------------------------------------------------

    def url(self, name: str) -> str:
        return f"postgresql+psycopg://{SUPERUSER}@{HOST}:{self.port}/{name}"

    def create_database(self, name: str) -> str:
        """Create the empty database ``name`` and return its SQLAlchemy URL."""
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
            raise ValueError(f"database name {name!r}: use lowercase letters, digits and _ (at most 63)")
        if not self._running:
            raise RuntimeError("the PostgreSQL server is not running; call start() first")
        import psycopg
        from psycopg import sql

        with psycopg.connect(host=HOST, port=self.port, user=SUPERUSER, dbname="postgres",
                             autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    # -- internals ----------------------------------------------------------------------------------------

    def _make_folder(self) -> None:
        if os.geteuid() != 0:
            self.base = Path(tempfile.mkdtemp(prefix="tunelab-pg-"))
        else:
            # The unprivileged server user must reach its folder: the parent has to be passable by anyone.
            self._owner = _unprivileged_user()
            self._prefix = _drop_privileges_prefix(self._owner)
            parent = next((Path(p) for p in (tempfile.gettempdir(), "/tmp")
                           if Path(p).is_dir() and _traversable_by_others(Path(p))), None)
            if parent is None:
                raise RuntimeError("no temporary folder that an unprivileged user can reach (tried $TMPDIR, /tmp)")
            self.base = Path(tempfile.mkdtemp(prefix="tunelab-pg-", dir=parent))
            os.chmod(self.base, 0o755)
        self.socket_dir.mkdir()
        if self._owner is not None:
            for path in (self.base, self.socket_dir):
                os.chown(path, self._owner.pw_uid, self._owner.pw_gid)

    def _pg_ctl_start(self) -> None:
        _, pg_ctl = self._binaries
        options = (f"-p {self.port} -k {self.socket_dir} -c listen_addresses={HOST} -c fsync=off")
        self._run([pg_ctl, "-w", "-t", str(START_TIMEOUT_S), "-D", str(self.data_dir), "-l", str(self.log_file),
                   "-o", options, "start"], "pg_ctl start")

    def _run(self, command: list[str], what: str) -> None:
        # The server gets a log file (-l), so it holds no pipe of ours open and capturing its output is safe.
        result = subprocess.run(self._prefix + command, cwd=self.base, stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, check=False)
        if result.returncode != 0:
            output = (result.stdout + result.stderr).strip()
            raise RuntimeError(f"{what} failed (exit {result.returncode}): {' '.join(self._prefix + command)}\n"
                               f"{output[-2000:]}\n--- server log (tail) ---\n{self._log_tail()}")

    def _log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty server log)"
