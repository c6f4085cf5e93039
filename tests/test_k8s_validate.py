"""`make k8s-validate` (tools/k8s_validate.py): the real overlays pass, and each policy it promises
catches a manifest that breaks it (a missing probe, a privileged or root container, a `latest` tag, a
prod Deployment without a PodDisruptionBudget, ...), naming the object; the Python renderer agrees
with kustomize; the migration Job's module applies the migrations."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from services.common.db import with_database

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"


def _load_tool() -> Any:
    spec = importlib.util.spec_from_file_location("k8s_validate", ROOT / "tools" / "k8s_validate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["k8s_validate"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


kv = _load_tool()
VERSION = kv.project_version()


def problems(k8s_dir: Path = K8S) -> list[str]:
    return [str(p) for r in kv.validate_tree(k8s_dir, version=VERSION) for p in r.problems]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A private copy of k8s/ to break."""
    shutil.copytree(K8S, tmp_path / "k8s")
    return tmp_path / "k8s"


def edit(path: Path, change: Callable[[list[dict[str, Any]]], None]) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    change(docs)
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def container(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return find(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]


def test_the_real_overlays_pass_schemas_and_policy() -> None:
    reports = kv.validate_tree(K8S, version=VERSION)
    assert {r.overlay for r in reports} >= {"dev", "prod"}
    assert [str(p) for r in reports for p in r.problems] == []
    prod = next(r for r in reports if r.overlay == "prod")
    kinds = {(o["kind"], o["metadata"]["name"]) for o in prod.objects}
    deployments = {n for k, n in kinds if k == "Deployment"}
    assert {"ingest", "writer", "anomaly", "forecast", "billing", "alerts", "gateway"} <= deployments
    assert {n for k, n in kinds if k == "HorizontalPodAutoscaler"} == {"ingest", "anomaly", "gateway"}
    assert deployments <= {n for k, n in kinds if k == "PodDisruptionBudget"}
    assert ("Cluster", "metermesh-db") in kinds and ("ScheduledBackup", "metermesh-db-nightly") in kinds
    assert all(
        o["metadata"].get("namespace") == "metermesh" for o in prod.objects if o["kind"] != "Namespace"
    )


def test_the_command_exits_zero_on_the_repository_and_one_on_a_problem(tree: Path, capsys: Any) -> None:
    assert kv.main([]) == 0
    edit(tree / "base/services/ingest.yaml", lambda docs: container(docs, "ingest").pop("resources"))
    assert kv.main(["--k8s-dir", str(tree)]) == 1
    out = capsys.readouterr().out
    assert "prod: Deployment/ingest: container 'ingest': no resources.requests.cpu" in out
    assert "FAILED" in out


@pytest.mark.parametrize("probe", ["readinessProbe", "livenessProbe"])
def test_a_missing_probe_fails_naming_the_deployment_and_the_probe(tree: Path, probe: str) -> None:
    edit(tree / "base/services/billing.yaml", lambda docs: container(docs, "billing").pop(probe))
    found = problems(tree)
    assert f"prod: Deployment/billing: container 'billing': no {probe}" in found
    assert f"dev: Deployment/billing: container 'billing': no {probe}" in found


def test_a_model_service_without_a_startup_probe_fails(tree: Path) -> None:
    edit(tree / "base/services/forecast.yaml", lambda docs: container(docs, "forecast").pop("startupProbe"))
    assert (
        "prod: Deployment/forecast: container 'forecast': loads models at start: needs a startupProbe"
        in problems(tree)
    )


def test_a_grpc_service_probed_over_http_fails(tree: Path) -> None:
    def http(docs: list[dict[str, Any]]) -> None:
        container(docs, "alerts")["readinessProbe"] = {"tcpSocket": {"port": 50055}}

    edit(tree / "base/services/alerts.yaml", http)
    assert any("Deployment/alerts" in p and "native gRPC probe on port 50055" in p for p in problems(tree))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"privileged": True}, "privileged: true is not allowed"),
        ({"allowPrivilegeEscalation": True}, "allowPrivilegeEscalation must be false"),
        ({"runAsUser": 0}, "runAsUser is 0 (root)"),
        ({"runAsNonRoot": False}, "runAsNonRoot must be true"),
        ({"readOnlyRootFilesystem": False}, "readOnlyRootFilesystem must be true"),
        ({"capabilities": {"drop": ["NET_RAW"]}}, "capabilities.drop must include ALL"),
        ({"capabilities": {"drop": ["ALL"], "add": ["SYS_ADMIN"]}}, "capabilities.add must be empty"),
    ],
)
def test_an_unrestricted_container_fails(tree: Path, change: dict[str, Any], message: str) -> None:
    edit(
        tree / "base/services/ingest.yaml",
        lambda docs: container(docs, "ingest")["securityContext"].update(change),
    )
    found = problems(tree)
    assert any(
        p.startswith("prod: Deployment/ingest: container 'ingest':") and message in p for p in found
    ), found


def test_a_latest_tag_fails(tree: Path) -> None:
    kfile = tree / "base/kustomization.yaml"
    kfile.write_text(kfile.read_text().replace(f"newTag: {VERSION}", "newTag: latest"))
    found = problems(tree)
    assert (
        "prod: Deployment/gateway: container 'gateway': image 'ghcr.io/metermesh/metermesh:latest' uses the `latest` tag: pin a version"
        in found
    )


def test_an_untagged_image_and_a_stale_tag_fail(tree: Path) -> None:
    nats = tree / "base/nats/nats.yaml"
    nats.write_text(nats.read_text().replace("image: nats:2.15.1-alpine", "image: nats"))
    kfile = tree / "base/kustomization.yaml"
    kfile.write_text(kfile.read_text().replace(f"newTag: {VERSION}", "newTag: 0.0.9"))
    found = problems(tree)
    assert "dev: StatefulSet/nats: container 'nats': image 'nats' has no tag: pin a version" in found
    assert any("Deployment/ingest" in p and "must be the project version" in p for p in found)


def test_a_prod_deployment_without_a_disruption_budget_fails(tree: Path) -> None:
    edit(
        tree / "overlays/prod/disruption-budgets.yaml",
        lambda docs: docs.remove(find(docs, "PodDisruptionBudget", "writer")),
    )
    found = problems(tree)
    assert found == [
        "prod: Deployment/writer: no PodDisruptionBudget selects its pods (every Deployment needs one in prod)"
    ]


def test_prod_without_an_autoscaler_or_with_replicas_fighting_one_fails(tree: Path) -> None:
    edit(
        tree / "overlays/prod/autoscaling.yaml",
        lambda docs: docs.remove(find(docs, "HorizontalPodAutoscaler", "anomaly")),
    )
    kfile = tree / "overlays/prod/kustomization.yaml"
    kfile.write_text(
        kfile.read_text().replace("  - name: writer\n", "  - name: ingest\n    count: 3\n  - name: writer\n")
    )
    found = problems(tree)
    assert "prod: Deployment/anomaly: prod needs a HorizontalPodAutoscaler for it" in found
    assert any(
        "Deployment/ingest: spec.replicas is set but a HorizontalPodAutoscaler owns the count" in p
        for p in found
    )


def test_a_deployment_without_its_own_service_account_fails(tree: Path) -> None:
    def default_account(docs: list[dict[str, Any]]) -> None:
        docs.remove(find(docs, "ServiceAccount", "anomaly"))

    edit(tree / "base/services/anomaly.yaml", default_account)
    assert (
        "dev: Deployment/anomaly: serviceAccountName 'anomaly': no such ServiceAccount in the overlay"
        in problems(tree)
    )


def test_missing_default_deny_fails(tree: Path) -> None:
    edit(
        tree / "base/networkpolicies.yaml",
        lambda docs: docs.remove(find(docs, "NetworkPolicy", "default-deny")),
    )
    assert any("no default-deny policy" in p for p in problems(tree))


def test_secret_values_in_the_manifests_fail(tree: Path) -> None:
    def leak(docs: list[dict[str, Any]]) -> None:
        container(docs, "gateway")["env"].append({"name": "METERMESH_GATEWAY_JWT_SECRET", "value": "hunter2"})
        docs.append(
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "oops"}, "stringData": {"a": "b"}}
        )

    edit(tree / "base/services/gateway.yaml", leak)
    found = problems(tree)
    assert any(
        "Deployment/gateway" in p and "METERMESH_GATEWAY_JWT_SECRET has a literal value" in p for p in found
    )
    assert any(p.startswith("prod: Secret/oops: a Secret in the manifests") for p in found)


def test_wiring_mistakes_fail(tree: Path) -> None:
    config = tree / "base/config.yaml"
    text = (
        config.read_text()
        .replace('"billing:50054"', '"billing:50055"')
        .replace("nats://nats:4222", "nats://natz:4222")
    )
    config.write_text(text)
    kfile = tree / "overlays/dev/kustomization.yaml"
    kfile.write_text(
        kfile.read_text().replace('METERMESH_STREAM_REPLICAS: "1"', 'METERMESH_STREAM_REPLICAS: "3"')
    )
    found = problems(tree)
    assert any(
        "METERMESH_BILLING_ADDR 'billing:50055': Service billing has no port 50055" in p for p in found
    )
    assert any("NATS_URL 'nats://natz:4222': no Service 'natz'" in p for p in found)
    assert any(p.startswith("dev:") and "METERMESH_STREAM_REPLICAS 3: must be 1..1" in p for p in found)


def test_a_kustomize_feature_the_renderer_lacks_fails_loudly(tree: Path) -> None:
    kfile = tree / "overlays/dev/kustomization.yaml"
    kfile.write_text(kfile.read_text() + "namePrefix: dev-\n")
    found = problems(tree)
    assert len([p for p in found if p.startswith("dev:")]) == 1
    assert any("namePrefix not supported by tools/k8s_validate.py's renderer" in p for p in found)


# --- the renderer -------------------------------------------------------------------------------------

SAMPLE = {
    "d.yaml": """
apiVersion: apps/v1
kind: Deployment
metadata: {name: x}
spec:
  selector: {matchLabels: {a: b}}
  template:
    metadata: {labels: {a: b}}
    spec:
      containers:
        - name: c1
          image: app
          env: [{name: A, value: "1"}, {name: B, value: "2"}, {name: C, value: "3"}]
          ports: [{containerPort: 80, name: http}]
        - name: c2
          image: other:1.0
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: x}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: x}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: x}
subjects: [{kind: ServiceAccount, name: x}]
---
apiVersion: example.com/v1
kind: Widget
metadata: {name: w}
spec: {list: [1, 2], keep: true}
""",
    "kustomization.yaml": """
resources: [d.yaml]
namespace: ns
labels:
  - pairs: {part: of}
    includeTemplates: true
images:
  - {name: app, newName: registry/app, newTag: "2.0"}
replicas:
  - {name: x, count: 3}
patches:
  - patch: |-
      apiVersion: apps/v1
      kind: Deployment
      metadata: {name: x}
      spec:
        template:
          spec:
            containers:
              - name: c2
                $patch: delete
              - name: c1
                env: [{name: NEW, value: "n"}, {name: B, $patch: delete}, {name: A, value: "11"}]
                ports: [{containerPort: 81, name: admin}]
  - target: {kind: Deployment, labelSelector: part!=x}
    patch: |-
      - op: add
        path: /spec/template/spec/containers/0/args
        value: ["--flag"]
  - patch: |-
      apiVersion: example.com/v1
      kind: Widget
      metadata: {name: w}
      spec: {list: [3], keep: null}
""",
}


def _sample(tmp_path: Path) -> Path:
    for name, text in SAMPLE.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def test_renderer_patches_labels_images_replicas_namespace(tmp_path: Path) -> None:
    objs = {o["kind"]: o for o in kv.render(_sample(tmp_path))}
    d = objs["Deployment"]
    assert d["metadata"] == {"name": "x", "labels": {"part": "of"}, "namespace": "ns"}
    assert d["spec"]["replicas"] == 3
    assert d["spec"]["selector"] == {"matchLabels": {"a": "b"}}  # selectors untouched
    assert d["spec"]["template"]["metadata"]["labels"] == {"a": "b", "part": "of"}
    [c1] = d["spec"]["template"]["spec"]["containers"]
    assert c1["image"] == "registry/app:2.0"
    assert c1["args"] == ["--flag"]
    # kustomize's order: the patch's items first, then the base's others.
    assert c1["env"] == [
        {"name": "NEW", "value": "n"},
        {"name": "A", "value": "11"},
        {"name": "C", "value": "3"},
    ]
    assert [p["containerPort"] for p in c1["ports"]] == [81, 80]
    assert objs["RoleBinding"]["subjects"] == [{"kind": "ServiceAccount", "name": "x", "namespace": "ns"}]
    assert objs["Widget"]["spec"] == {"list": [3]}  # a custom resource: JSON merge patch


def test_renderer_reports_a_patch_that_matches_nothing(tmp_path: Path) -> None:
    _sample(tmp_path)
    kfile = tmp_path / "kustomization.yaml"
    kfile.write_text(
        kfile.read_text().replace(
            "kind: Widget\n      metadata: {name: w}", "kind: Widget\n      metadata: {name: nope}"
        )
    )
    with pytest.raises(kv.RenderError, match="no object matches the patch for Widget/nope"):
        kv.render(tmp_path)


def _kubectl_kustomize(directory: Path) -> list[dict[str, Any]]:
    out = subprocess.run(["kubectl", "kustomize", str(directory)], check=True, capture_output=True, text=True)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def _by_id(objs: list[dict[str, Any]]) -> dict[tuple[str, ...], str]:
    return {
        (o["apiVersion"], o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]): json.dumps(
            o, sort_keys=True
        )
        for o in objs
    }


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed (CI has none)")
@pytest.mark.parametrize("overlay", ["dev", "prod", "sample"])
def test_renderer_agrees_with_kubectl_kustomize(tmp_path: Path, overlay: str) -> None:
    directory = _sample(tmp_path) if overlay == "sample" else K8S / "overlays" / overlay
    assert _by_id(kv.render(directory)) == _by_id(_kubectl_kustomize(directory))


# --- the migration Job's module -----------------------------------------------------------------------


async def test_migrate_module_applies_every_migration_once(admin_db_url: str) -> None:
    name = f"k8s_migrate_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(admin_db_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    db_url = with_database(admin_db_url, name)
    env = {**os.environ, "DATABASE_URL": db_url, "METERMESH_MIGRATE_WAIT_SECONDS": "5"}
    try:
        for _ in range(2):  # the second run finds nothing to do and still succeeds
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "services.common.migrate",
                env=env,
                cwd=ROOT,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
            assert proc.returncode == 0, out.decode()
        conn = await asyncpg.connect(db_url)
        try:
            rows = await conn.fetch("SELECT version FROM schema_migrations ORDER BY 1")
        finally:
            await conn.close()
        files = sorted((ROOT / "services/common/migrations").glob("*.sql"))
        assert [r["version"] for r in rows] == [int(f.name[:4]) for f in files]
    finally:
        admin = await asyncpg.connect(admin_db_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def test_migrate_module_fails_fast_without_a_database_url() -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    done = subprocess.run(
        [sys.executable, "-m", "services.common.migrate"], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "DATABASE_URL" in done.stderr


def test_the_grafana_dashboard_queries_metrics_the_code_exports() -> None:
    dashboard = json.loads((K8S / "grafana" / "metermesh-dashboard.json").read_text())
    exported = (ROOT / "services/common/metrics.py").read_text() + (ROOT / "gateway/metrics.py").read_text()
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs
    for expr in exprs:
        for metric in re.findall(r"metermesh_[a-z_]+", expr):
            base = re.sub(r"_(bucket|total|count|sum)$", "", metric)
            assert f'"{metric}"' in exported or f'"{base}"' in exported, (
                f"{metric} in {expr!r} is not a metric of the services or the gateway"
            )
