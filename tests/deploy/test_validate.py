"""deploy/validate.py (`make lint`) accepts the shipped deploy files and refuses broken ones:
what CI relies on to keep compose, the Kubernetes manifests, the image, the alert rules and the
dashboard valid without a cluster or a Docker engine."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def _load_validate():  # deploy/ is not a package: load the script as the module it also is
    spec = importlib.util.spec_from_file_location("deploy_validate", DEPLOY / "validate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


validate = _load_validate()


def run_validate(*args: str) -> subprocess.CompletedProcess[str]:
    """`python deploy/validate.py ARGS`, run in this process (the same main, faster)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = validate.main(list(args))
    return subprocess.CompletedProcess(["validate.py", *args], code, out.getvalue(), "")


def test_the_shipped_deploy_files_pass_as_make_lint_runs_them():
    result = subprocess.run([sys.executable, str(DEPLOY / "validate.py")], capture_output=True,
                            text=True, cwd=ROOT, check=False, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


def _edited_copy(source: Path, tmp_path: Path, old: str, new: str) -> Path:
    text = source.read_text()
    assert old in text, f"{old!r} not in {source}"
    target = tmp_path / source.name
    target.write_text(text.replace(old, new, 1))
    return target


def test_a_typo_in_compose_is_refused_with_the_key_named(tmp_path: Path):
    broken = _edited_copy(DEPLOY / "compose.yaml", tmp_path, "    healthcheck:\n",
                          "    healthchek:\n")
    result = run_validate("--compose", str(broken))
    assert result.returncode == 1
    assert "services/kafka: unknown key 'healthchek'" in result.stdout


def test_a_broker_whose_log_dirs_are_not_on_its_volume_is_refused(tmp_path: Path):
    # The defect of the first compose file: KAFKA_LOG_DIRS unset, so the data went to the
    # image's /tmp/kraft-combined-logs while the volume sat unused at /var/lib/kafka/data.
    broken = _edited_copy(DEPLOY / "compose.yaml", tmp_path,
                          "      KAFKA_LOG_DIRS: /var/lib/kafka/data\n", "")
    result = run_validate("--compose", str(broken))
    assert result.returncode == 1
    assert "services/kafka: data dir /tmp/kraft-combined-logs is on no volume" in result.stdout


def test_a_depends_on_naming_no_service_is_refused(tmp_path: Path):
    broken = _edited_copy(DEPLOY / "compose.yaml", tmp_path,
                          "      postgres: { condition: service_healthy }\n",
                          "      postgress: { condition: service_healthy }\n")
    result = run_validate("--compose", str(broken))
    assert "depends_on: no service 'postgress'" in result.stdout


@pytest.mark.parametrize(("old", "new", "expected"), [
    ('command: ["router", "--metrics-port", "9090"]', 'command: ["router", "--metrics", "9090"]',
     "services/router: `contactsync router --metrics 9090`: No such option: --metrics"),
    ('command: ["applier", "--metrics-port", "9090"]', 'command: ["applier"]',
     "services/applier: its health checks ask port 9090, `contactsync applier` serves None"),
    ('      CONTACTSYNC_HEALTH_PORT: "8080"', '      CONTACTSYNC_HEALTH_PORT: "9090"',
     "services/webhook: its health checks ask port 9090"),
    ('command: ["reconcile", "--schedule", "--metrics-port", "9090"]',
     'command: ["topics", "ensure"]', "no service runs the role `contactsync reconcile`"),
])
def test_a_compose_service_the_cli_or_its_healthcheck_would_refuse_is_refused(
        tmp_path: Path, old: str, new: str, expected: str):
    broken = _edited_copy(DEPLOY / "compose.yaml", tmp_path, old, new)
    result = run_validate("--compose", str(broken))
    assert result.returncode == 1
    assert expected in result.stdout, result.stdout


@pytest.fixture
def k8s_copy(tmp_path: Path) -> Path:
    shutil.copytree(DEPLOY / "k8s", tmp_path / "k8s")
    return tmp_path / "k8s"


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize(("file", "old", "new", "expected"), [
    # Kubernetes' own schema, strict: an unknown field is an error, not silently dropped.
    ("base/probes.yaml", "readinessProbe:", "readinesProbe:", "unknown key 'readinesProbe'"),
    ("base/webhook.yaml", "containerPort: 8080", "containerPort: eighty",
     "'eighty' is not of type 'integer'"),
    # KEDA's CRD schema (vendored): a misspelt field of the ScaledObject.
    ("base/scaledobjects.yaml", "  maxReplicaCount: 12", "  maxReplicas: 12",
     "spec: unknown key 'maxReplicas'"),
    # The rules of the issue.
    ("base/pod-defaults.yaml", "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false",
     "readOnlyRootFilesystem: true"),
    ("base/pod-defaults.yaml", "runAsNonRoot: true", "runAsNonRoot: false",
     "needs runAsNonRoot"),
    ("base/singletons.yaml", "  replicas: 1\n", "  replicas: 2\n", "a singleton: replicas 1"),
    ("base/probes.yaml", "livenessProbe:", "terminationMessagePath: /tmp/x\n          x:",
     "liveness and readiness probes"),
    # What the image runs: the real CLI parses it, and the probes ask the port it serves.
    ("base/consumers.yaml", 'args: ["router", "--metrics-port", "9090"]', 'args: ["routr"]',
     "`contactsync routr`: No such command 'routr'"),
    ("base/singletons.yaml", '"--metrics-port", "9090"]', '"--metrics-port", "9091"]',
     "its health checks ask port 9090, `contactsync subscriptions --metrics-port 9091` serves"),
    # A kustomize feature the renderer does not have is named, never silently skipped.
    ("base/kustomization.yaml", "resources:\n", "commonLabels: { team: crm }\nresources:\n",
     "['commonLabels'] not supported by deploy/validate.py's renderer"),
    # Every role of the pipeline runs somewhere.
    ("base/kustomization.yaml", "  - singletons.yaml\n", "",
     "no service runs the role `contactsync bc-changes`"),
])
def test_a_broken_manifest_is_refused(k8s_copy: Path, file: str, old: str, new: str,
                                      expected: str):
    _edit(k8s_copy / file, old, new)
    result = run_validate("--kustomize", str(k8s_copy / "overlays" / "production"))
    assert result.returncode == 1
    assert expected in result.stdout, result.stdout


def test_an_inlined_secret_is_refused(k8s_copy: Path):
    (k8s_copy / "base" / "secret.yaml").write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "contactsync"},
        "stringData": {"database-url": "postgresql+psycopg://u:p@db/contactsync"}}))
    _edit(k8s_copy / "base" / "kustomization.yaml", "resources:\n", "resources:\n  - secret.yaml\n")
    result = run_validate("--kustomize", str(k8s_copy / "base"))
    assert "Secret/contactsync: Secrets are referenced, never shipped" in result.stdout


def _kustomize_command() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


@pytest.mark.skipif(_kustomize_command() is None, reason="no kustomize or kubectl on PATH")
@pytest.mark.parametrize("overlay", ["base", "overlays/production"])
def test_the_renderer_prints_what_kustomize_prints(overlay: str):
    """What make lint validates is what `kubectl kustomize` would apply."""
    command = _kustomize_command()
    assert command is not None
    printed = subprocess.run([*command, str(DEPLOY / "k8s" / overlay)], capture_output=True,
                             text=True, check=True, timeout=120).stdout
    theirs = [d for d in yaml.safe_load_all(printed) if d]
    ours = validate.render_kustomization(DEPLOY / "k8s" / overlay)

    def key(r: dict) -> tuple[str, str]:
        return r["kind"], r["metadata"]["name"]

    assert sorted(map(key, ours)) == sorted(map(key, theirs))
    assert {key(r): r for r in ours} == {key(r): r for r in theirs}


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("FROM python:3.11.14-slim-bookworm AS build", "FROM python AS build", "DL3006"),
    ("USER 10001:10001", "USER contactsync", "USER must be numeric"),
    ("HEALTHCHECK --interval", "# HEALTHCHECK --interval", "no HEALTHCHECK"),
])
def test_a_dockerfile_breaking_the_rules_is_refused(tmp_path: Path, old: str, new: str,
                                                    expected: str):
    broken = _edited_copy(DEPLOY / "Dockerfile", tmp_path, old, new)
    result = run_validate("--dockerfile", str(broken))
    assert result.returncode == 1
    assert expected in result.stdout, result.stdout


def test_a_lock_file_missing_a_dependency_is_refused(tmp_path: Path):
    lock = tmp_path / "requirements.lock"
    lines = (DEPLOY / "requirements.lock").read_text().split("\norjson==", 1)
    lock.write_text(lines[0] + "\n" + lines[1].split("\n", 1)[1].split("\n", 1)[1])
    problems = validate.check_lock(lock, ROOT / "pyproject.toml")
    assert any("'orjson>=3.9' of pyproject.toml is not pinned" in p for p in problems), problems
    assert validate.check_lock(DEPLOY / "requirements.lock", ROOT / "pyproject.toml") == []


def test_a_lock_file_carrying_testcontainers_into_the_image_is_refused(tmp_path: Path):
    lock = tmp_path / "requirements.lock"
    lock.write_text((DEPLOY / "requirements.lock").read_text()
                    + "testcontainers==4.15.0 \\\n    --hash=sha256:00\n")
    assert validate.check_lock(lock, ROOT / "pyproject.toml") == [
        f"{lock}: testcontainers is for the tests only, not the image: run `make lock`"]


def test_an_alert_on_a_series_the_product_does_not_export_is_refused(tmp_path: Path):
    broken = _edited_copy(DEPLOY / "prometheus" / "alerts.yaml", tmp_path,
                          "contactsync_deadletter_messages_total",
                          "contactsync_deadletters_total")
    result = run_validate("--rules", str(broken))
    assert result.returncode == 1
    assert ("ContactsyncDeadLetters: 'contactsync_deadletters_total' is not a series "
            "contactsync exports") in result.stdout


def test_a_dashboard_panel_on_a_series_the_product_does_not_export_is_refused(tmp_path: Path):
    dashboard = json.loads((DEPLOY / "grafana" / "contactsync.json").read_text())
    dashboard["panels"][0]["targets"][0]["expr"] = "sum by (group) (kafka_consumergroup_lag)"
    broken = tmp_path / "dashboard.json"
    broken.write_text(json.dumps(dashboard))
    result = run_validate("--dashboard", str(broken))
    assert result.returncode == 1
    assert "'kafka_consumergroup_lag' is not a series contactsync exports" in result.stdout


def test_every_alert_the_issue_names_is_there_and_reads_exported_series():
    alerts = dict(validate.alert_expressions(DEPLOY / "prometheus" / "alerts.yaml"))
    wanted = {
        "ContactsyncConsumerLagGrowing": "contactsync_consumer_lag",
        "ContactsyncDeadLetters": "contactsync_deadletter_messages_total",
        "ContactsyncThrottled": "contactsync_api_throttled_total",
        "ContactsyncSubscriptionExpiring": "contactsync_subscription_expiry_timestamp_seconds",
        "ContactsyncCredentialsFailing": "contactsync_credential_failures_total",
    }
    for alert, series in wanted.items():
        assert series in validate.promql_series(alerts[alert]), alert


@pytest.mark.parametrize(("expr", "series"), [
    ('sum by (group) (rate(a_total{x="y"}[5m]))', {"a_total"}),
    ("sum(a) by (le) / on(job) group_left(instance) b offset 1h", {"a", "b"}),
    ("histogram_quantile(0.95, sum by (le) (rate(h_bucket[$__rate_interval])))", {"h_bucket"}),
    ("label_values(g{user=~\"$user\"}, user)", {"g"}),
    ("time() - g > 26 * 3600 and on() vector(1)", {"g"}),
])
def test_the_series_of_a_query_are_found(expr: str, series: set[str]):
    assert validate.promql_series(expr) == series


def test_an_alert_with_a_bracket_left_open_is_refused(tmp_path: Path):
    broken = _edited_copy(DEPLOY / "prometheus" / "alerts.yaml", tmp_path,
                          "(contactsync_credential_failures_total[10m]))",
                          "(contactsync_credential_failures_total[10m])")
    result = run_validate("--rules", str(broken))
    assert "ContactsyncCredentialsFailing: unbalanced '('" in result.stdout, result.stdout
