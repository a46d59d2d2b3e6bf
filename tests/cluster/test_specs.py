"""Every spec in cluster/ parses, names commands and configs that exist, and exposes nothing.

No Ray cluster starts here: the launcher YAML is checked against Ray's own schema, the
Kubernetes manifests structurally, and each cdlm-train command line they contain is composed
with the real Hydra configs, so a renamed preset or key breaks this test, not a cloud bill.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cdlm_dist.config import compose
from cdlm_dist.jobs.client import AUTH_HINT, FORWARD_HINT

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
SPECS = sorted(p for p in CLUSTER.rglob("*") if p.suffix in (".yaml", ".yml"))
DOCKERFILE = CLUSTER / "Dockerfile"
K8S_KINDS = {"RayCluster", "RayJob", "NetworkPolicy", "PersistentVolumeClaim"}
PRIVATE_DASHBOARD_HOSTS = {"127.0.0.1", "$POD_IP"}
PUBLIC = re.compile(r"0\.0\.0\.0|LoadBalancer|NodePort|::/0|\[::\]")
CDLM_COMMAND = re.compile(r"(?<![\w/.-])(cdlm-[a-z]+)(?![\w.:/-])")  # not cdlm-dist:tag, ~/cdlm-dist
REPO_PATH = re.compile(r"(?<![\w/.~-])((?:cluster|configs|docs)/[\w./-]*\w)")
TRAIN_LINE = re.compile(r"(?<![\w/.-])cdlm-(?:train|submit)\s")
MAKE_TARGET = re.compile(r"(?:^|&&|;|`|RUN)\s*make (\w+)", re.M)  # make as the command


def _docs(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every (dotted key, leaf or mapping) pair of a parsed YAML document."""
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")


def _strings(path: Path) -> list[str]:
    """All string values of a spec, plus its comments (the usage lines people copy)."""
    values = [v for d in _docs(path) for _, v in _walk(d) if isinstance(v, str)]
    comments = [ln.split("#", 1)[1] for ln in path.read_text().splitlines() if "#" in ln]
    return [*values, "\n".join(comments)]


def _resource_names() -> set[str]:
    """Names the Kubernetes specs give their resources (cdlm-cluster, cdlm-results, ...)."""
    return {d["metadata"]["name"] for p in SPECS for d in _docs(p) if "metadata" in d}


def _ray_cluster_specs() -> Iterator[tuple[str, dict]]:
    for path in SPECS:
        for doc in _docs(path):
            if doc.get("kind") == "RayCluster":
                yield doc["metadata"]["name"], doc["spec"]
            elif doc.get("kind") == "RayJob":
                yield doc["metadata"]["name"], doc["spec"]["rayClusterSpec"]


def test_there_are_specs_and_they_parse() -> None:
    names = {p.relative_to(CLUSTER).as_posix() for p in SPECS}
    assert {"aws.yaml", "kuberay/raycluster.yaml", "kuberay/rayjob.yaml"} <= names
    for path in SPECS:
        assert _docs(path), f"{path} is empty"


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_nothing_binds_or_publishes_on_all_interfaces(path: Path) -> None:
    for doc in _docs(path):
        for key, value in _walk(doc):
            assert not (isinstance(value, str) and PUBLIC.search(value)), f"{path}{key}: {value}"
            assert not key.endswith((".hostNetwork", ".hostPort")), f"{path}{key}"
            assert not (key.endswith(".enableIngress") and value), f"{path}{key}"


def test_launcher_config_matches_rays_schema_and_keeps_the_dashboard_local() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    autoscaler = pytest.importorskip("ray.autoscaler")
    schema = json.loads((Path(autoscaler.__file__).parent / "ray-schema.json").read_text())
    config = _docs(CLUSTER / "aws.yaml")[0]
    jsonschema.validate(config, schema)
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    for cmd in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        if " start " in cmd:
            assert "RAY_AUTH_MODE=token" in cmd, cmd
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    for excluded in (".venv", ".git", "runs"):
        assert excluded in config["rsync_exclude"]


def test_kubernetes_manifests_are_private_and_authenticated() -> None:
    for path in SPECS:
        if path.parent.name != "kuberay":
            continue
        for doc in _docs(path):
            assert doc["apiVersion"] and doc["metadata"]["name"], path
            assert doc["kind"] in K8S_KINDS, f"{path}: unexpected {doc['kind']}"
    clusters = dict(_ray_cluster_specs())
    assert clusters, "no RayCluster or RayJob"
    ray_pin = re.search(r'"ray\[[^]]*\]==([\d.]+)', (ROOT / "pyproject.toml").read_text())
    for name, spec in clusters.items():
        head = spec["headGroupSpec"]
        assert head["serviceType"] == "ClusterIP", name
        assert head["rayStartParams"]["dashboard-host"] in PRIVATE_DASHBOARD_HOSTS, name
        assert spec["authOptions"]["mode"] == "token", name
        assert spec["rayVersion"].startswith(ray_pin.group(1).rstrip(".")), name
        if head["rayStartParams"]["dashboard-host"] == "$POD_IP":  # probes must follow it
            container = head["template"]["spec"]["containers"][0]
            env = {e["name"] for e in container["env"]}
            assert "POD_IP" in env, name
            for probe in ("readinessProbe", "livenessProbe"):
                assert "$POD_IP:8265" in " ".join(container[probe]["exec"]["command"]), name


def test_hints_name_the_resources_the_specs_create() -> None:
    """cdlm-submit's error hints point at the Service and Secret raycluster.yaml creates."""
    (name, _), = [(n, s) for n, s in _ray_cluster_specs()
                  if n in FORWARD_HINT and n != "cdlm-train"]
    assert f"svc/{name}-head-svc" in FORWARD_HINT
    assert f"secret {name} " in AUTH_HINT
    assert "ray dashboard cluster/aws.yaml" in FORWARD_HINT


@pytest.mark.parametrize("path", [*SPECS, DOCKERFILE, CLUSTER / "README.md"], ids=lambda p: p.name)
def test_named_commands_paths_and_targets_exist(path: Path, scripts: dict[str, str]) -> None:
    text = "\n".join(_strings(path)) if path.suffix in (".yaml", ".yml") else path.read_text()
    known = set(scripts) | _resource_names()
    for command in CDLM_COMMAND.findall(text):
        assert command in known, f"{path.name} names {command}: no such command or resource"
    for rel in REPO_PATH.findall(text):
        assert (ROOT / rel).exists(), f"{path.name} names {rel}, which does not exist"
    makefile = (ROOT / "Makefile").read_text()
    for target in MAKE_TARGET.findall(text):
        assert re.search(rf"^{target}:", makefile, re.M), f"{path.name}: no make target {target}"


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_train_commands_compose_with_the_real_configs(path: Path) -> None:
    """Each `cdlm-train ...` / `cdlm-submit train ...` line is a config Hydra accepts."""
    found = 0
    for text in _strings(path):
        for line in text.replace("\\\n", " ").splitlines():
            words = shlex.split(line.split("#")[0]) if TRAIN_LINE.search(line) else []
            for i, word in enumerate(words):
                if word == "cdlm-train" or (word == "cdlm-submit" and words[i + 1:i + 2] == ["train"]):
                    start = i + 1 if word == "cdlm-train" else i + 2
                    overrides = [w for w in words[start:] if "=" in w and not w.startswith("-")]
                    compose(overrides)  # raises ConfigError naming the bad group or key
                    found += 1
    assert found, f"{path.name} shows no cdlm-train or cdlm-submit train command"


def test_dockerfile_installs_like_the_readme() -> None:
    text = DOCKERFILE.read_text()
    code = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert not any(PUBLIC.search(ln) or ln.startswith("EXPOSE") for ln in code)
    makefile = (ROOT / "Makefile").read_text()
    assert "RUN make install" in text
    assert re.search(r"^install:", makefile, re.M)
    assert re.search(r"pip install .*-e '?\.", makefile)  # make install is `pip install -e .`
    venv = re.search(r"^VENV \?= (\S+)", makefile, re.M).group(1)
    assert f"/app/{venv}/bin" in text  # where `make install` puts cdlm-train and ray
    readme = (ROOT / "README.md").read_text()
    # The README installs through make (its targets set up .venv) or `pip install -e`: both
    # are the Makefile's install recipe, which the image runs.
    assert re.search(r"^make \w+", readme, re.M) or "pip install -e" in readme
    for copied in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for src in copied.split():
            assert (ROOT / src).exists(), f"Dockerfile copies missing {src}"
