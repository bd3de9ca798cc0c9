"""deploy/kubernetes/: the Helm values parse and name what the chart and the code expect, and
the Dockerfile copies paths that exist and serves the definitions module."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from integrity.defs.names import REMEDIATION_TAG, SHARD_TAG
from integrity.defs.reconciliation.shards import ENV_SHARDS

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes"
REPO_ROOT = DEPLOY.parents[1]


def test_the_helm_values_parse_and_configure_pods_and_the_run_queue() -> None:
    values = yaml.safe_load((DEPLOY / "values.yaml").read_text())
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    assert launcher["envSecrets"] == [{"name": "integrity-credentials"}]
    coordinator = values["dagsterDaemon"]["runCoordinator"]
    assert coordinator["type"] == "QueuedRunCoordinator"
    queue = coordinator["config"]["queuedRunCoordinator"]
    limits = {limit["key"]: limit["limit"] for limit in queue["tagConcurrencyLimits"]}
    assert limits == {SHARD_TAG: 8, REMEDIATION_TAG: 1}
    assert queue["maxConcurrentRuns"] > limits[SHARD_TAG]
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"] == ["--module-name", "integrity.definitions"]
    env = {e["name"]: e["value"] for e in deployment["env"]}
    assert env[ENV_SHARDS] == "16" and f"{ENV_SHARDS}=16" in launcher["envVars"]
    # Credentials only from secrets: no key, password or URL with a password in the values.
    text = (DEPLOY / "values.yaml").read_text()
    assert not re.search(r"(?i)(secret_access_key|password)\s*:\s*\S", text)
    assert values["postgresql"]["enabled"] is False


def test_the_dockerfile_copies_paths_that_exist_and_serves_the_definitions() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    copied = [
        source
        for line in text.splitlines()
        if line.startswith("COPY ")
        for source in line.split()[1:-1]
    ]
    assert copied == ["pyproject.toml", "README.md", "integrity"]
    for source in copied:
        assert (REPO_ROOT / source).exists(), source
    assert '"integrity.definitions"' in text and '"dagster", "api", "grpc"' in text
    assert "dagster-k8s" in text
