"""A throwaway MariaDB server for the manager's MySQL smoke tests: mariadb-install-db + mariadbd in a temp dir,
TCP on 127.0.0.1, no grant tables (tests only). Debian's mariadb-server-core (scripts/system-deps.sh)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from tests.waiting import wait_for

SERVER = "/usr/sbin/mariadbd"
INSTALL_DB = "/usr/bin/mariadb-install-db"


def available() -> bool:
    """Return whether the MariaDB server binaries are installed."""
    return os.access(SERVER, os.X_OK) and os.access(INSTALL_DB, os.X_OK)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class MariaDBServer:
    """One server; ``start()`` waits until it accepts connections, ``stop()`` removes everything."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="df-mariadb-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self._user = ["--user=root"] if os.geteuid() == 0 else []
        self._proc: subprocess.Popen[bytes] | None = None
        self._counter = 0

    def start(self, timeout: float = 60.0) -> None:
        """Initialise the data directory and start the server."""
        subprocess.run(
            [INSTALL_DB, "--no-defaults", f"--datadir={self.data}", "--skip-test-db", *self._user],
            capture_output=True,
            check=True,
            timeout=120,
        )
        log = open(self.root / "server.log", "wb")  # noqa: SIM115 (closed with the process)
        self._proc = subprocess.Popen(
            [
                SERVER, "--no-defaults", f"--datadir={self.data}", f"--socket={self.root / 'sock'}",
                f"--port={self.port}", "--bind-address=127.0.0.1", "--skip-grant-tables", "--skip-name-resolve",
                "--innodb-flush-log-at-trx-commit=0", "--character-set-server=utf8mb4", *self._user,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        proc = self._proc

        def accepting() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"mariadbd exited: {(self.root / 'server.log').read_text()[-2000:]}")
            try:
                self._execute("SELECT 1")
            except Exception:
                return False
            return True

        try:
            wait_for(accepting, timeout, "mariadbd to accept connections", interval=0.2)
        except AssertionError as exc:
            raise TimeoutError(str(exc)) from None

    def _execute(self, sql: str) -> None:
        import pymysql

        conn = pymysql.connect(host="127.0.0.1", port=self.port, user="root", connect_timeout=2)
        try:
            with conn.cursor() as cursor:
                cursor.execute(sql)
            conn.commit()
        finally:
            conn.close()

    def create_database(self) -> str:
        """Create a fresh database; return its URL."""
        self._counter += 1
        name = f"test_{os.getpid()}_{self._counter}"
        self._execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
        return f"mysql://root@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        """Stop the server and delete its files."""
        if self._proc is not None and self._proc.poll() is None:
            # Killed, not shut down: the data is thrown away, and InnoDB's clean shutdown took half a minute here.
            self._proc.kill()
            self._proc.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)
