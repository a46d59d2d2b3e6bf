"""cdlm-submit's pieces without a cluster: job directories, result transport, addresses, errors."""

from __future__ import annotations

import io
import json
import os
import shlex
import shutil
import sys
import tarfile
import types
from pathlib import Path

import pytest

from cdlm_dist.cli import submit as submit_cli
from cdlm_dist.cli.submit import check_config, main
from cdlm_dist.jobs import COMMANDS, remote
from cdlm_dist.jobs.client import (
    META_RESULTS,
    SubmitError,
    build_entrypoint,
    fetch,
    resolve_address,
    submit,
    with_cluster_defaults,
)
from cdlm_dist.jobs.results import (
    MANIFEST,
    ResultsError,
    download,
    pack,
    read_archive_text,
    unpack,
    write_archive_text,
)

FAKE = "cdlm-fake"
ADDRESS_ENV = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")


class FakeClient:
    """The parts of JobSubmissionClient that submit() and fetch() use, in memory."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict] = {}

    def submit_job(self, **kw) -> str:
        self.jobs[kw["submission_id"]] = kw | {"status": "RUNNING"}
        return kw["submission_id"]

    def get_job_info(self, job_id: str) -> types.SimpleNamespace:
        from ray.job_submission import JobStatus

        if job_id not in self.jobs:
            raise RuntimeError("Request failed with status code 404: no such job")
        job = self.jobs[job_id]
        return types.SimpleNamespace(status=JobStatus(job["status"]), metadata=job["metadata"])


def _fake_command(monkeypatch, exit_code: int = 0) -> None:
    """A stand-in for cdlm-train: writes runs/fake/summary.json where it runs (resuming:
    counts the runs, as a resumed cdlm-train continues from what the last one left)."""

    def fake_main(argv: list[str]) -> int:
        run = Path("runs") / "fake"
        runs = run / "runs.txt"
        count = int(runs.read_text()) + 1 if runs.exists() else 1
        run.mkdir(parents=True, exist_ok=True)
        runs.write_text(str(count))
        (run / "summary.json").write_text(json.dumps({"argv": argv}))
        (run / "checkpoints").mkdir(exist_ok=True)
        (run / "checkpoints" / "step_3.pt").write_bytes(b"weights")
        ray_run = run / "ray" / "fake"  # runner=ray: Ray Train's checkpoints
        (ray_run / "checkpoint_000001").mkdir(parents=True, exist_ok=True)
        (ray_run / "checkpoint_000001" / "state.pt").write_bytes(b"weights")
        (ray_run / "checkpoint_manager_snapshot.json").write_text("{}")
        return exit_code

    module = types.ModuleType("cdlm_fake_cmd")
    module.main = fake_main
    monkeypatch.setitem(sys.modules, "cdlm_fake_cmd", module)
    monkeypatch.setitem(remote.COMMANDS, FAKE, "cdlm_fake_cmd:main")


@pytest.fixture
def uploaded(tmp_path: Path, monkeypatch) -> Path:
    """What Ray extracts a working_dir to, as the job's cwd (shared by jobs with equal code)."""
    src = tmp_path / "pkg"
    (src / "configs").mkdir(parents=True)
    (src / "configs" / "train.yaml").write_text("x: 1\n")
    (src / "data.parquet").write_bytes(b"rows")
    monkeypatch.chdir(src)
    monkeypatch.setattr(sys, "path", list(sys.path))
    return src


def test_job_runs_in_its_own_dir_with_the_code_linked(uploaded: Path, tmp_path: Path,
                                                      monkeypatch) -> None:
    _fake_command(monkeypatch)
    monkeypatch.setenv("HOME", str(tmp_path))  # the head's home: ~/jobs is tmp_path/jobs
    assert remote.main(["run", "--job-id", "j1", "--storage", "~/jobs", "--", FAKE,
                        "a=1", "b=x y"]) == 0
    job_dir = tmp_path / "jobs" / "j1"
    assert json.loads((job_dir / "runs/fake/summary.json").read_text()) == {"argv": ["a=1",
                                                                                     "b=x y"]}
    assert (job_dir / "configs").is_symlink() and (job_dir / "data.parquet").is_symlink()
    assert not (uploaded / "runs").exists()  # the shared extract stays clean
    manifest = json.loads((job_dir / MANIFEST).read_text())
    assert manifest["exit_code"] == 0 and manifest["command"] == FAKE
    assert manifest["storage"] == "~/jobs"
    assert str(tmp_path) not in (job_dir / MANIFEST).read_text()  # it travels: no head paths

    fetched = download(str(job_dir), tmp_path / "fetched")
    assert fetched == [MANIFEST, "runs"]  # results only, not the links to the code


def test_failing_command_fails_the_job_and_keeps_its_manifest(uploaded: Path, tmp_path: Path,
                                                             monkeypatch) -> None:
    _fake_command(monkeypatch, exit_code=2)
    storage = tmp_path / "jobs"
    assert remote.main(["run", "--job-id", "j2", "--storage", str(storage), FAKE]) == 2
    assert json.loads((storage / "j2" / MANIFEST).read_text())["exit_code"] == 2


def test_uri_storage_uploads_results_and_fetch_downloads_them(uploaded: Path, tmp_path: Path,
                                                              monkeypatch) -> None:
    _fake_command(monkeypatch)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "scratch"))
    bucket = f"file://{tmp_path / 'bucket'}"
    assert remote.main(["run", "--job-id", "j3", "--storage", bucket, FAKE]) == 0
    assert (tmp_path / "bucket" / "j3" / "runs/fake/summary.json").is_file()
    names = download(f"{bucket}/j3", tmp_path / "out")
    assert names == [MANIFEST, "runs"]
    assert (tmp_path / "out/runs/fake/checkpoints/step_3.pt").read_bytes() == b"weights"
    with pytest.raises(ResultsError, match="no results"):
        download(f"{bucket}/missing", tmp_path / "out2")


def test_archive_survives_the_job_log(uploaded: Path, tmp_path: Path, monkeypatch) -> None:
    _fake_command(monkeypatch)
    storage = tmp_path / "jobs"
    remote.main(["run", "--job-id", "j4", "--storage", str(storage), FAKE])
    log = io.StringIO()
    log.write("some training output\n")
    write_archive_text(pack(storage / "j4", with_checkpoints=False), log)
    log.write("a warning printed after the archive\n")
    names = unpack(read_archive_text(log.getvalue().splitlines()), tmp_path / "out")
    assert names == [MANIFEST, "runs"]
    assert (tmp_path / "out/runs/fake/summary.json").is_file()
    assert not (tmp_path / "out/runs/fake/checkpoints").exists()
    assert not (tmp_path / "out/runs/fake/ray/fake/checkpoint_000001").exists()
    assert (tmp_path / "out/runs/fake/ray/fake/checkpoint_manager_snapshot.json").is_file()

    lines = log.getvalue().splitlines()
    corrupt = [ln.replace("A", "B") if ln.startswith("CDLM-ARCHIVE:") else ln for ln in lines]
    with pytest.raises(ResultsError, match="corrupt"):
        read_archive_text(corrupt)
    with pytest.raises(ResultsError, match="no complete"):
        read_archive_text(lines[:-3])


def test_unpack_refuses_paths_that_leave_the_target(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ResultsError, match="refusing"):
        unpack(buffer.getvalue(), tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()


def test_entrypoint_quotes_overrides_and_joins_the_cluster() -> None:
    overrides = with_cluster_defaults("cdlm-train", ["run_dir=runs/${name}", "data.preset=a b"])
    assert overrides[-1] == "runner.address=auto"
    entry = build_entrypoint("python", "id1", "~/cdlm_jobs", "cdlm-train", overrides)
    args = shlex.split(entry)
    assert args[:4] == ["python", "-m", "cdlm_dist.jobs.remote", "run"]
    assert args[args.index("--") + 1:] == ["cdlm-train", *overrides]
    assert with_cluster_defaults("cdlm-train", ["runner.address=ray://x:1"]) == [
        "runner.address=ray://x:1"]
    assert with_cluster_defaults("cdlm-sweep", ["a=1"]) == ["a=1", "runner.address=auto"]


def test_commands_match_the_console_scripts(scripts: dict[str, str]) -> None:
    """The names a job runs are the project's console scripts, pointing at the same functions."""
    assert scripts["cdlm-submit"] == "cdlm_dist.cli.submit:main"
    for name, target in COMMANDS.items():
        if name in scripts:  # cdlm-sweep may land separately
            assert scripts[name] == target
    assert "cdlm-train" in scripts


def test_addresses(monkeypatch) -> None:
    for name in ADDRESS_ENV:
        monkeypatch.delenv(name, raising=False)
    assert resolve_address(None) == "http://127.0.0.1:8265"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:8265")
    assert resolve_address(None) == "http://10.0.0.5:8265"
    assert resolve_address("https://ray.example:443") == "https://ray.example:443"
    with pytest.raises(SubmitError, match="Ray Client address"):
        resolve_address("ray://head:10001")


def test_address_flag_wins_over_the_environment(fake_job_server, unused_address: str,
                                                monkeypatch, capsys) -> None:
    """Ray's job client replaces the address it is given with RAY_API_SERVER_ADDRESS or
    RAY_ADDRESS; --address must still be the server cdlm-submit talks to."""
    for name in ADDRESS_ENV:
        monkeypatch.setenv(name, unused_address)
    assert main(["list", "--address", fake_job_server.address]) == 0, capsys.readouterr().err
    assert "GET /api/jobs/" in fake_job_server.requests
    assert all(os.environ[name] == unused_address for name in ADDRESS_ENV)  # left as they were


def test_environment_names_the_server_without_the_flag(fake_job_server, monkeypatch) -> None:
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_ADDRESS", fake_job_server.address)
    assert main(["list"]) == 0
    assert "GET /api/jobs/" in fake_job_server.requests


@pytest.mark.parametrize("action, key", [("train", "train.stepz"), ("sweep", "sweep.num_samplez")])
def test_bad_config_fails_here_in_one_line_before_any_upload(action: str, key: str,
                                                             fake_job_server, capsys) -> None:
    code = main([action, "train.steps=6", f"{key}=3", "--address", fake_job_server.address])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and f"unknown config key '{key}'" in err, err
    assert f"`cdlm-{action} --cfg`" in err
    assert fake_job_server.requests == []  # not even a connection


def test_good_config_passes_the_local_check() -> None:
    check_config("cdlm-train", ["train.steps=6"])
    check_config("cdlm-sweep", ["sweep.num_samples=2"])


class FailingJobClient(FakeClient):
    """A job that fails after logging LOG; its log streams like Ray's (tail_job_logs)."""

    LOG = "".join(f"job line {i:02d}\n" for i in range(30))

    def submit_job(self, **kw) -> str:
        job_id = super().submit_job(**kw)
        self.jobs[job_id]["status"] = "FAILED"
        return job_id

    def get_job_info(self, job_id: str) -> types.SimpleNamespace:
        info = super().get_job_info(job_id)
        info.message = ("Job entrypoint command failed with exit code 1, last available logs "
                        f"(truncated to 20,000 chars):\n{self.LOG}")  # as Ray words it
        return info

    def get_job_logs(self, job_id: str) -> str:
        return self.LOG

    async def tail_job_logs(self, job_id: str):
        for line in self.LOG.splitlines(keepends=True):
            yield line


def test_followed_job_prints_each_log_line_once(monkeypatch, capsys) -> None:
    """--follow streams the log; the failure message must not repeat its tail."""
    pytest.importorskip("ray.job_submission")
    client = FailingJobClient()
    monkeypatch.setattr(submit_cli, "connect", lambda address: client)
    code = main(["train", "train.steps=6", "--follow", "--storage", "/tmp/cdlm_jobs"])
    out, err = capsys.readouterr()
    assert code == 1
    assert "FAILED: Job entrypoint command failed with exit code 1" in err
    assert err.count("\n") == 1 and "last available logs" not in err, err
    for line in FailingJobClient.LOG.splitlines():
        assert (out + err).count(line) == 1, line


def test_unreachable_cluster_is_one_clear_line(unused_address: str, capsys) -> None:
    address = unused_address
    assert main(["status", "some-job", "--address", address]) == 3
    err = capsys.readouterr().err
    assert f"cannot reach the Ray job server at {address}" in err
    assert "kubectl port-forward" in err and "Traceback" not in err


def test_usage_errors(capsys) -> None:
    assert main(["deploy"]) == 2
    assert "unknown action 'deploy'" in capsys.readouterr().err
    assert main([]) == 2
    assert main(["--help"]) == 0
    with pytest.raises(SystemExit):
        main(["fetch", "job-1"])  # --to is required: argparse's usage message


def test_resume_reuses_the_earlier_jobs_directory_and_storage(tmp_path: Path) -> None:
    pytest.importorskip("ray.job_submission")
    client = FakeClient()
    storage = str(tmp_path / "jobs")
    first = submit(client, "cdlm-train", ["a=1"], storage=storage, root=None)
    args = shlex.split(client.jobs[first]["entrypoint"])
    assert args[args.index("--job-id") + 1] == first
    with pytest.raises(SubmitError, match="still RUNNING"):
        submit(client, "cdlm-train", ["a=1"], storage="/elsewhere", root=None, resume=first)

    client.jobs[first]["status"] = "FAILED"
    second = submit(client, "cdlm-train", ["a=1"], storage="/elsewhere", root=None, resume=first)
    assert second != first
    args = shlex.split(client.jobs[second]["entrypoint"])
    assert args[args.index("--job-id") + 1] == first  # the first job's directory ...
    assert args[args.index("--storage") + 1] == storage  # ... in the first job's storage
    assert client.jobs[second]["metadata"][META_RESULTS] == first

    (tmp_path / "jobs" / first / "runs").mkdir(parents=True)
    client.jobs[second]["status"] = "SUCCEEDED"
    assert fetch(client, second, tmp_path / "out") == ["runs"]  # fetch follows it there
    with pytest.raises(SubmitError, match="no job 'nope'") as err:
        submit(client, "cdlm-train", [], storage=storage, root=None, resume="nope")
    assert err.value.exit_code == 4


def test_resumed_job_continues_in_place_and_from_uri_storage(uploaded: Path, tmp_path: Path,
                                                            monkeypatch) -> None:
    _fake_command(monkeypatch)
    storage = tmp_path / "jobs"
    for _ in range(2):
        monkeypatch.chdir(uploaded)  # every job starts in Ray's extracted working_dir
        assert remote.main(["run", "--job-id", "j5", "--storage", str(storage), FAKE]) == 0
    assert (storage / "j5/runs/fake/runs.txt").read_text() == "2"

    scratch = tmp_path / "scratch"
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    bucket = f"file://{tmp_path / 'bucket'}"
    for _ in range(2):
        monkeypatch.chdir(uploaded)
        assert remote.main(["run", "--job-id", "j6", "--storage", bucket, FAKE]) == 0
        shutil.rmtree(scratch)  # a new head pod: only the bucket remembers
    assert (tmp_path / "bucket/j6/runs/fake/runs.txt").read_text() == "2"
