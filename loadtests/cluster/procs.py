"""Child processes of the harness: server replicas, redis-server, the L7 proxy; all on 127.0.0.1, free ports.

Every child runs in its own session (a Ctrl-C in the terminal reaches only the harness, which then stops the
children in order) and gets SIGKILL if the harness dies without cleaning up (Linux PR_SET_PDEATHSIG).
`Processes.close()` stops everything that is still running: SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import ctypes
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from loadtests.run import free_port, start_server, stop_server, wait_ready

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


CHILD_POPEN = {"start_new_session": True, "preexec_fn": _die_with_parent}


def find_tool(name: str) -> str | None:
    """Path of a system tool (also in /usr/sbin and /sbin, where Debian puts nginx and haproxy)."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/local/sbin")


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout_s: float = 20.0) -> None:
    """Until 127.0.0.1:port accepts a TCP connection; raise if `proc` exits first or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{what} did not listen on 127.0.0.1:{port} within {timeout_s:.0f} s")


@dataclass
class Replica:
    index: int
    port: int
    proc: subprocess.Popen
    log: Path
    killed: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass
class Processes:
    """The running children of one harness run (replicas, redis-server, proxies) and their temp dir."""

    workdir: Path
    bundle: Path
    replica_env: dict[str, str] = field(default_factory=dict)
    replicas: list[Replica] = field(default_factory=list)
    redis: subprocess.Popen | None = None
    redis_port: int | None = None
    others: list[subprocess.Popen] = field(default_factory=list)

    # --- replicas -----------------------------------------------------------------------------------------
    def start_replica(self, index: int, env: dict[str, str]) -> Replica:
        port = free_port()
        log = self.workdir / f"replica{index}-{port}.log"
        proc = start_server(self.bundle, port, {**self.replica_env, **env}, log, popen_kwargs=CHILD_POPEN)
        return Replica(index, port, proc, log)

    def start_replicas(self, count: int, env: dict[str, str], ready_timeout_s: float = 120.0) -> None:
        """Stop the current replicas, start `count` new ones with `env` (in parallel) and wait until ready."""
        self.stop_replicas()
        self.replicas = [self.start_replica(i, env) for i in range(count)]
        for replica in self.replicas:
            wait_ready(replica.url, replica.proc, ready_timeout_s)

    def restart_replica(self, index: int, env: dict[str, str], ready_timeout_s: float = 120.0) -> Replica:
        replica = self.start_replica(index, env)
        wait_ready(replica.url, replica.proc, ready_timeout_s)
        self.replicas[index] = replica
        return replica

    def kill_replica(self, index: int) -> Replica:
        """`kill -9` of one replica (no drain, connections reset)."""
        replica = self.replicas[index]
        replica.proc.send_signal(signal.SIGKILL)
        replica.proc.wait()
        replica.killed = True
        return replica

    def stop_replicas(self) -> None:
        for replica in self.replicas:
            stop_server(replica.proc, timeout_s=15)
        self.replicas = []

    # --- redis ----------------------------------------------------------------------------------------------
    def start_redis(self) -> str:
        """A fresh redis-server (no persistence, LRU-bounded like a cache); returns its redis:// URL."""
        binary = find_tool("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (deploy/tools/install_ci_tools.sh --system)")
        self.stop_redis()
        self.redis_port = free_port()
        folder = self.workdir / "redis"
        folder.mkdir(exist_ok=True)
        args = ["--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--dir", str(folder), "--logfile", str(folder / "redis.log"), "--maxmemory", "512mb"]
        args += ["--maxmemory-policy", "allkeys-lru"]
        self.redis = subprocess.Popen([binary, *args], **CHILD_POPEN)
        wait_port(self.redis_port, self.redis, "redis-server")
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def stop_redis(self, sig: int = signal.SIGTERM) -> None:
        if self.redis is not None and self.redis.poll() is None:
            self.redis.send_signal(sig)
            try:
                self.redis.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.redis.kill()
                self.redis.wait()

    # --- anything else (the proxy) --------------------------------------------------------------------------
    def spawn(self, cmd: list[str], log: Path) -> subprocess.Popen:
        with log.open("wb") as handle:
            proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, **CHILD_POPEN)
        self.others.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> None:
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        """Stop every child still running (proxies first, then replicas, then redis)."""
        for proc in self.others:
            self.stop(proc)
        self.others = []
        self.stop_replicas()
        self.stop_redis()
