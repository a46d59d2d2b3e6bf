"""The submit round trip against a real (local, loopback) Ray head: submit, follow, fetch."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from cdlm_dist.cli.submit import main
from cdlm_dist.jobs.results import MANIFEST

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]

TINY_JOB = ["train.steps=6", "train.eval_every=3", "train.checkpoint_every=3",
            "data.max_train_per_domain=256", "data.max_test_per_domain=128",
            "data.batch_size=32", "eval.plots=false", "eval.baseline=false",
            "eval.a_distance=false", "eval.domain_kl=false", "runner=local",
            "train.progress=false"]
FOLLOW_TIMEOUT_S = "300"
FAULT = "injected fault at step 3 (train.fail_at_step)"
TCP_LISTEN = "0A"  # the state column of /proc/net/tcp for LISTEN


@pytest.fixture(autouse=True)
def _token(ray_head, monkeypatch) -> None:
    """cdlm-submit finds the cluster's token where a user would put it."""
    monkeypatch.setenv("RAY_AUTH_TOKEN", ray_head.token)


def _submit(head, capsys, *overrides: str) -> tuple[int, str, str, str]:
    code = main(["train", *overrides, "--address", head.address, "--storage", str(head.storage),
                 "--follow", "--timeout", FOLLOW_TIMEOUT_S])
    out, err = capsys.readouterr()
    found = re.search(r"submitted cdlm-train job (\S+)", out)
    assert found, out + err
    return code, found.group(1), out, err


def _cli(head, capsys, *args: str) -> tuple[int, str, str]:
    code = main([*args, "--address", head.address])
    out, err = capsys.readouterr()
    return code, out, err


def test_train_job_round_trip(ray_head, tmp_path: Path, capsys) -> None:
    code, job_id, out, err = _submit(ray_head, capsys, *TINY_JOB)
    assert code == 0, out[-3000:] + err
    assert "SUCCEEDED" in out

    code, out, _ = _cli(ray_head, capsys, "status", job_id)
    assert code == 0 and "SUCCEEDED" in out

    # Same host: the storage path is readable here, so fetch copies it directly.
    code, out, err = _cli(ray_head, capsys, "fetch", job_id, "--to", str(tmp_path / "direct"))
    assert code == 0, err
    summaries = list((tmp_path / "direct" / "runs").glob("*/summary.json"))
    assert len(summaries) == 1, out
    run = summaries[0].parent
    assert json.loads(summaries[0].read_text())["steps"] == 6
    for name in ("config.yaml", "metrics.jsonl", "metrics.parquet", "checkpoints"):
        assert (run / name).exists(), name
    manifest = json.loads((tmp_path / "direct" / MANIFEST).read_text())
    assert manifest["exit_code"] == 0 and manifest["command"] == "cdlm-train"
    assert not any(p.is_symlink() for p in (tmp_path / "direct").iterdir())

    # As from another machine: through an export job's log, over the job server port only.
    code, out, err = _cli(ray_head, capsys, "fetch", job_id, "--to", str(tmp_path / "via_job"),
                          "--via", "job", "--no-checkpoints")
    assert code == 0, err
    fetched = tmp_path / "via_job" / "runs" / run.name
    assert json.loads((fetched / "summary.json").read_text())["steps"] == 6
    assert not (fetched / "checkpoints").exists()


def test_failed_job_reports_its_log_and_missing_results(ray_head, tmp_path: Path,
                                                        capsys) -> None:
    code, job_id, out, err = _submit(ray_head, capsys, *TINY_JOB, "train.fail_at_step=3")
    assert code == 1
    assert f"job {job_id} FAILED: Job entrypoint command failed with exit code 1" in err
    assert err.count("\n") == 1 and "Traceback" not in err, err  # one line: the log is above
    for line in ("cdlm-job: cdlm-train", FAULT):  # --follow printed the log, each line once
        assert (out + err).count(line) == 1, out + err

    code, out, _ = _cli(ray_head, capsys, "logs", job_id)
    assert code == 0 and FAULT in out
    code, out, _ = _cli(ray_head, capsys, "list")
    assert code == 0 and job_id in out and "FAILED" in out
    code, out, _ = _cli(ray_head, capsys, "stop", job_id)
    assert code == 0 and "was not running; now FAILED" in out
    code, out, _ = _cli(ray_head, capsys, "status", job_id)
    assert code == 1 and "FAILED" in out

    # Results that are gone: the export job says so, and so do we (exit 4, no traceback).
    shutil.rmtree(ray_head.storage / job_id)
    code, _, err = _cli(ray_head, capsys, "fetch", job_id, "--to", str(tmp_path / "gone"))
    assert code == 4 and "not found" in err and "Traceback" not in err

    code, _, err = _cli(ray_head, capsys, "status", "no-such-job")
    assert code == 4 and "no job 'no-such-job'" in err


def test_job_server_listens_on_loopback_only(ray_head) -> None:
    """The dashboard/job server port is bound to 127.0.0.1, not 0.0.0.0 or a public address."""
    port_hex = f"{ray_head.dashboard_port:04X}"
    binds = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state = fields[1], fields[3]
            if state == TCP_LISTEN and local.endswith(f":{port_hex}"):
                binds.append(local.split(":")[0])
    assert binds == ["0100007F"], binds  # 127.0.0.1, little-endian hex


def test_bad_config_never_reaches_the_cluster(ray_head, capsys) -> None:
    code = main(["train", "train.stepz=3", "--address", ray_head.address])
    assert code == 2 and "unknown config key 'train.stepz'" in capsys.readouterr().err
    code, out, _ = _cli(ray_head, capsys, "list")
    assert code == 0 and "train.stepz" not in out


def test_wrong_token_is_refused_with_a_hint(ray_head, monkeypatch, capsys) -> None:
    monkeypatch.setenv("RAY_AUTH_TOKEN", "not-the-token")
    code, _, err = _cli(ray_head, capsys, "list")
    assert code == 5 and "rejected the token" in err and "RAY_AUTH_TOKEN" in err
