"""A private Ray head for the submit tests: loopback only, its own ports and temp dir.

Not ``ray stop`` (it stops every Ray process on the machine, other sessions' included) and not
``ray.init`` (tests/conftest.py's in-process instance must not find ours): the head runs as
``ray start --block`` in a new session with ``--temp-dir`` of its own, so its address file is
not /tmp/ray's, and teardown signals that process and then kills only processes whose command
line or working directory lies under our temp dir or job storage. Token authentication is on,
with a token of our own, as the cluster specs in cluster/ have it.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

try:  # Ray binds its log handlers to the sys.stderr of its first import: make that pytest's
    import ray.job_submission  # noqa: F401  session stream, not a test's capsys (closed later)
except ImportError:
    pass

LOOPBACK = "127.0.0.1"
HEAD_START_TIMEOUT_S = 120
STOP_GRACE_S = 30
POLL_S = 0.5
HEAD_CPUS = 2
OBJECT_STORE_BYTES = 128 * 1024**2  # Ray's floor is 75 MiB; the default takes 30% of RAM
LOG_TAIL_CHARS = 3000
TOKEN_BYTES = 32


@dataclass
class RayHead:
    """What tests need of the head: where to submit, and where its jobs keep results."""

    address: str
    token: str
    dashboard_port: int
    storage: Path
    temp_dir: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def console_scripts(root: Path) -> dict[str, str]:
    """pyproject's [project.scripts] (tomllib is Python 3.11+, and we support 3.10)."""
    text = (root / "pyproject.toml").read_text()
    section = re.search(r"^\[project\.scripts\]\n(.*?)(?=^\[|\Z)", text, re.M | re.S).group(1)
    return dict(re.findall(r'^([\w-]+)\s*=\s*"([^"]+)"', section, re.M))


@pytest.fixture
def scripts() -> dict[str, str]:
    return console_scripts(Path(__file__).resolve().parents[2])


@pytest.fixture
def unused_address() -> str:
    """An http address on loopback where nothing listens."""
    return f"http://{LOOPBACK}:{free_port()}"


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _ours(pid: int, markers: list[str]) -> bool:
    """Whether a process names one of our directories (as an argument or ``--flag=DIR/...``)
    or runs inside one; a path, not a prefix: /tmp/a1 is not /tmp/a10."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return False
    patterns = [re.compile(rf"(^|[=:]){re.escape(m)}(/|$)") for m in markers]
    return any(p.search(a) for p in patterns for a in [*args, cwd])


def _stop(proc: subprocess.Popen, markers: list[str]) -> None:
    """SIGTERM the blocking `ray start` (it drains and stops its node), then sweep leftovers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid() and _ours(int(entry.name),
                                                                            markers):
            try:
                os.kill(int(entry.name), signal.SIGKILL)
            except OSError:
                pass


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayHead]:
    """One head per test session (starting one costs ~10 s), dashboard and job server on
    127.0.0.1 only; ``python`` on its PATH is this venv's, as the cluster image's would be."""
    pytest.importorskip("ray.job_submission")
    pytest.importorskip("aiohttp", reason="the job server needs ray[default]")
    bin_dir = Path(sys.executable).parent
    # Short, under /tmp: Ray's Unix socket paths live in the temp dir and have a length limit.
    temp_dir = Path(tempfile.mkdtemp(prefix="cdlmray", dir="/tmp"))
    storage = tmp_path_factory.mktemp("cdlm_jobs")
    log_path = tmp_path_factory.mktemp("ray_head") / "head.log"
    gcs, dashboard, client, agent = (free_port() for _ in range(4))
    token = secrets.token_hex(TOKEN_BYTES)  # our own: never ~/.ray/auth_token, never disabled
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    for name in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH"):
        env.pop(name, None)
    cmd = [str(bin_dir / "ray"), "start", "--head", "--block", f"--port={gcs}",
           f"--node-ip-address={LOOPBACK}", f"--dashboard-host={LOOPBACK}",
           f"--dashboard-port={dashboard}", f"--ray-client-server-port={client}",
           f"--dashboard-agent-listen-port={agent}", f"--num-cpus={HEAD_CPUS}", "--num-gpus=0",
           "--include-dashboard=true", f"--temp-dir={temp_dir}",
           f"--object-store-memory={OBJECT_STORE_BYTES}", "--disable-usage-stats"]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=temp_dir)
    address = f"http://{LOOPBACK}:{dashboard}"
    try:
        deadline = time.monotonic() + HEAD_START_TIMEOUT_S
        while not _answers(f"{address}/api/gcs_healthz"):  # open without a token
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray head did not start; its log:\n"
                            f"{log_path.read_text()[-LOG_TAIL_CHARS:]}")
            time.sleep(POLL_S)
        yield RayHead(address, token, dashboard, storage, temp_dir)
    finally:
        _stop(proc, [str(temp_dir), str(storage)])
        shutil.rmtree(temp_dir, ignore_errors=True)


@dataclass
class FakeJobServer:
    """An HTTP server that answers what JobSubmissionClient asks on connecting and listing,
    and records every request: enough to see which address a client used, and whether it
    talked to the server at all."""

    address: str
    requests: list[str]


@pytest.fixture
def fake_job_server() -> Iterator[FakeJobServer]:
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    ray = pytest.importorskip("ray")
    seen: list[str] = []
    answers = {"/api/version": {"version": "1", "ray_version": ray.__version__,
                                "ray_commit": ""}, "/api/jobs/": []}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            seen.append(f"GET {self.path}")
            body = json.dumps(answers.get(self.path, {})).encode()
            self.send_response(200 if self.path in answers else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:  # noqa: N802 (an upload or a submission: never answered)
            seen.append(f"POST {self.path}")
            self.send_response(500)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield FakeJobServer(f"http://{LOOPBACK}:{server.server_address[1]}", seen)
    finally:
        server.shutdown()
        server.server_close()
