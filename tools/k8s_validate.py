"""`make k8s-validate`: renders every overlay under k8s/overlays with a Python implementation of the
kustomize features the manifests use, validates every object against the Kubernetes JSON schemas
(kubernetes-validate, strict: unknown fields are errors), checks the custom resources that have no
schema there (CloudNativePG, Barman Cloud) structurally, and applies metermesh's own policy: probes,
resources, the restricted securityContext, ServiceAccounts, PodDisruptionBudgets in prod, pinned images,
default-deny NetworkPolicies, no secret values, and the wiring between objects (Services, ConfigMaps,
Secrets, NATS and stream replicas, the database URL). Prints one line per problem, naming the overlay,
the object and what is wrong; exits 1 if there is any.

    .venv/bin/python tools/k8s_validate.py                  # every overlay
    .venv/bin/python tools/k8s_validate.py --render prod    # print an overlay as `kubectl kustomize` would

Needs only Python and pyyaml + kubernetes-validate (no kubectl, no kustomize binary, no network).
"""

from __future__ import annotations

import argparse
import copy
import functools
import re
import sys
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S_DIR = ROOT / "k8s"
# The oldest Kubernetes minor the manifests must work on; kubernetes-validate ships its schemas.
KUBERNETES_VERSION = "1.33"
# The metermesh image: its tag must be the project's version.
OUR_IMAGE = "ghcr.io/metermesh/metermesh"
OUR_UID = 10001
# Services that load models at start (a startupProbe keeps liveness off them until they are SERVING).
MODEL_MODULES = {"services.anomaly", "services.forecast"}
# Overlay-specific expectations.
PROD = "prod"
DEV = "dev"
PROD_AUTOSCALED = {"ingest", "anomaly", "gateway"}
PROD_STREAM_REPLICAS = 3
PROD_DB_INSTANCES = 3

Obj = dict[str, Any]


class RenderError(Exception):
    """The kustomization cannot be rendered (or uses a feature this renderer does not implement)."""


# ======================================================================================================
# Rendering: the kustomize subset used under k8s/
# ======================================================================================================

SUPPORTED_FIELDS = {
    "apiVersion",
    "kind",
    "resources",
    "namespace",
    "labels",
    "commonAnnotations",
    "images",
    "replicas",
    "patches",
}
# Kinds that are not namespaced (the namespace transformer leaves them alone).
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "StorageClass",
    "PriorityClass",
    "PersistentVolume",
    "IngressClass",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
}
# API groups whose kinds kustomize patches with strategic-merge semantics; other groups (custom
# resources) get a JSON merge patch (RFC 7386): maps merge, lists are replaced.
BUILTIN_GROUPS = {
    "",
    "apps",
    "batch",
    "policy",
    "autoscaling",
    "networking.k8s.io",
    "rbac.authorization.k8s.io",
    "storage.k8s.io",
    "scheduling.k8s.io",
}
# Strategic merge: lists merged by a key instead of replaced (by field name, as in the Kubernetes API).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "topologySpreadConstraints": "topologyKey",
    "resourceClaims": "name",
}
# Where labels go with includeTemplates (besides metadata.labels of every object).
TEMPLATE_LABEL_PATHS = {
    "Deployment": [("spec", "template")],
    "StatefulSet": [("spec", "template")],
    "DaemonSet": [("spec", "template")],
    "ReplicaSet": [("spec", "template")],
    "Job": [("spec", "template")],
    "CronJob": [("spec", "jobTemplate"), ("spec", "jobTemplate", "spec", "template")],
}
REPLICATED = {"Deployment", "StatefulSet", "ReplicaSet", "ReplicationController"}


def _group(api_version: str) -> str:
    return api_version.split("/")[0] if "/" in api_version else ""


def _load_docs(path: Path) -> list[Obj]:
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as exc:
        raise RenderError(f"{path}: not valid YAML: {exc}") from None
    for d in docs:
        if not isinstance(d, dict) or "kind" not in d or "apiVersion" not in d:
            raise RenderError(f"{path}: every document must be a Kubernetes object (apiVersion, kind)")
        d.setdefault("metadata", {})
        if not d["metadata"].get("name"):
            raise RenderError(f"{path}: a {d['kind']} without metadata.name")
    return docs


def _kustomization_file(directory: Path) -> Path:
    for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        if (directory / name).is_file():
            return directory / name
    raise RenderError(f"{directory}: no kustomization.yaml")


def ref(obj: Obj) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def render(directory: Path, _seen: tuple[Path, ...] = ()) -> list[Obj]:
    """The objects `kubectl kustomize DIRECTORY` prints, for the kustomize features listed in
    SUPPORTED_FIELDS. Anything else in a kustomization is an error, never silently ignored."""
    directory = directory.resolve()
    if directory in _seen:
        raise RenderError(f"{directory}: a kustomization cycle")
    kfile = _kustomization_file(directory)
    kust = yaml.safe_load(kfile.read_text()) or {}
    unknown = sorted(set(kust) - SUPPORTED_FIELDS)
    if unknown:
        raise RenderError(
            f"{kfile}: {', '.join(unknown)} not supported by tools/k8s_validate.py's renderer "
            f"(supported: {', '.join(sorted(SUPPORTED_FIELDS))}); implement it there or use a supported field"
        )
    objs: list[Obj] = []
    for entry in kust.get("resources") or []:
        if "://" in entry or entry.startswith("github.com/"):
            raise RenderError(f"{kfile}: remote resource {entry!r}: CI renders offline; vendor it")
        path = directory / entry
        if path.is_dir():
            objs.extend(render(path, (*_seen, directory)))
        elif path.is_file():
            objs.extend(_load_docs(path))
        else:
            raise RenderError(f"{kfile}: resource {entry!r} does not exist")
    _check_unique(objs, kfile)
    # The order of kustomize's built-in transformers: patches, namespace, labels, annotations,
    # replicas, images.
    for i, patch in enumerate(kust.get("patches") or []):
        _apply_patch_entry(objs, patch, directory, f"{kfile} patches[{i}]")
    if kust.get("namespace"):
        _set_namespace(objs, kust["namespace"])
    for spec in kust.get("labels") or []:
        _add_labels(objs, spec, kfile)
    if kust.get("commonAnnotations"):
        for obj in objs:
            obj["metadata"].setdefault("annotations", {}).update(kust["commonAnnotations"])
    for spec in kust.get("replicas") or []:
        _set_replicas(objs, spec, kfile)
    for spec in kust.get("images") or []:
        _set_image(objs, spec, kfile)
    return objs


def _check_unique(objs: list[Obj], where: Path) -> None:
    seen: set[tuple[str, str, str, str]] = set()
    for obj in objs:
        key = (
            _group(obj["apiVersion"]),
            obj["kind"],
            obj["metadata"].get("namespace", ""),
            obj["metadata"]["name"],
        )
        if key in seen:
            raise RenderError(f"{where}: {ref(obj)} is defined twice")
        seen.add(key)


# --- patches ------------------------------------------------------------------------------------------


def _apply_patch_entry(objs: list[Obj], entry: Obj, directory: Path, where: str) -> None:
    if "path" in entry:
        text = (directory / entry["path"]).read_text()
    elif "patch" in entry:
        text = entry["patch"]
    else:
        raise RenderError(f"{where}: a patch needs `path` or `patch`")
    unknown = set(entry) - {"path", "patch", "target", "options"}
    if unknown or entry.get("options"):
        raise RenderError(f"{where}: {sorted(unknown) or 'options'} not supported by the renderer")
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    target = entry.get("target")
    if len(docs) == 1 and isinstance(docs[0], list):  # JSON 6902
        if not target:
            raise RenderError(f"{where}: a JSON 6902 patch (a list of operations) needs a target")
        matched = _select(objs, target)
        if not matched:
            raise RenderError(f"{where}: target {target} matches no object")
        for obj in matched:
            _json6902(obj, docs[0], f"{where} on {ref(obj)}")
        return
    for doc in docs:
        if not isinstance(doc, dict):
            raise RenderError(f"{where}: a patch must be an object (strategic merge) or a list (JSON 6902)")
        if target:
            matched = _select(objs, target)
        else:
            name = (doc.get("metadata") or {}).get("name")
            matched = [
                o
                for o in objs
                if o["kind"] == doc.get("kind")
                and o["metadata"]["name"] == name
                and _group(o["apiVersion"]) == _group(doc.get("apiVersion", ""))
            ]
        if not matched:
            raise RenderError(
                f"{where}: no object matches the patch for {doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
            )
        for obj in matched:
            body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind")}
            if target:  # the target picks the objects; the patch's own name does not rename them
                body.get("metadata", {}).pop("name", None)
            strategic = _group(obj["apiVersion"]) in BUILTIN_GROUPS
            merged = _merge(obj, body, strategic, f"{where} on {ref(obj)}")
            if merged is None:  # `$patch: delete` on the whole object
                objs.remove(obj)
                continue
            obj.clear()
            obj.update(merged)


def _labels_match(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            k, v = (s.strip() for s in term.split("!=", 1))
            if labels.get(k) == v:
                return False
        elif "=" in term:
            k, v = (s.strip() for s in term.split("=", 1))
            if labels.get(k) != v.lstrip("="):
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def _select(objs: list[Obj], target: Obj) -> list[Obj]:
    unknown = set(target) - {
        "group",
        "version",
        "kind",
        "name",
        "namespace",
        "labelSelector",
        "annotationSelector",
    }
    if unknown:
        raise RenderError(f"patch target fields {sorted(unknown)} not supported by the renderer")
    out = []
    for obj in objs:
        group = _group(obj["apiVersion"])
        version = obj["apiVersion"].split("/")[-1]
        meta = obj["metadata"]
        if "group" in target and target["group"] != group:
            continue
        if "version" in target and target["version"] != version:
            continue
        if "kind" in target and not re.fullmatch(target["kind"], obj["kind"]):
            continue
        if "name" in target and not re.fullmatch(target["name"], meta["name"]):
            continue
        if "namespace" in target and not re.fullmatch(target["namespace"], meta.get("namespace", "")):
            continue
        if "labelSelector" in target and not _labels_match(meta.get("labels") or {}, target["labelSelector"]):
            continue
        if "annotationSelector" in target and not _labels_match(
            meta.get("annotations") or {}, target["annotationSelector"]
        ):
            continue
        out.append(obj)
    return out


def _merge(base: Any, patch: Any, strategic: bool, where: str, key: str = "") -> Any:
    """Strategic merge patch (the subset: maps merge, null deletes, lists with a known merge key merge
    by it, `$patch: delete|replace`), or a JSON merge patch when `strategic` is false."""
    if not isinstance(patch, dict):
        if strategic and isinstance(patch, list) and isinstance(base, list):
            return _merge_list(base, patch, where, key)
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    if directive == "delete":
        return None
    if not isinstance(base, dict) or directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive is not None or any(k.startswith("$") for k in patch):
        raise RenderError(
            f"{where}: strategic-merge directive {sorted(k for k in patch if k.startswith('$'))} not supported"
        )
    out = copy.deepcopy(base)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
            continue
        merged = _merge(out.get(k), v, strategic, where, k)
        if merged is None:
            out.pop(k, None)
        else:
            out[k] = merged
    return out


def _merge_list(base: list[Any], patch: list[Any], where: str, key: str) -> list[Any]:
    mkey = MERGE_KEYS.get(key)
    if key == "ports" and patch and isinstance(patch[0], dict):
        mkey = "containerPort" if "containerPort" in patch[0] else "port"
    if mkey is None or not all(isinstance(p, dict) for p in patch):
        return copy.deepcopy(patch)
    # kustomize (kyaml) puts the patch's items first, in the patch's order, then the base's other items.
    # Order matters: env entries may refer to earlier ones as $(NAME).
    by_key = {b.get(mkey): b for b in base if isinstance(b, dict) and mkey in b}
    patched, seen = [], set()
    for item in patch:
        if mkey not in item:
            raise RenderError(f"{where}: an item of {key} without its merge key {mkey!r}")
        seen.add(item[mkey])
        if item.get("$patch") == "delete":
            continue
        if item[mkey] in by_key:
            patched.append(_merge(by_key[item[mkey]], item, True, where, key))
        else:
            patched.append({k: copy.deepcopy(v) for k, v in item.items() if k != "$patch"})
    rest = [copy.deepcopy(b) for b in base if not (isinstance(b, dict) and b.get(mkey) in seen)]
    return patched + rest


def _pointer(path: str, where: str) -> list[str]:
    if not path.startswith("/"):
        raise RenderError(f"{where}: JSON pointer {path!r} must start with /")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk_to(doc: Any, parts: list[str], where: str) -> Any:
    for p in parts:
        if isinstance(doc, list):
            try:
                doc = doc[int(p)]
            except (ValueError, IndexError):
                raise RenderError(f"{where}: no index {p!r}") from None
        elif isinstance(doc, dict) and p in doc:
            doc = doc[p]
        else:
            raise RenderError(f"{where}: path segment {p!r} does not exist")
    return doc


def _json6902(obj: Obj, ops: list[Obj], where: str) -> None:
    for op in ops:
        kind, parts = op.get("op"), _pointer(op.get("path", ""), where)
        parent, last = _walk_to(obj, parts[:-1], where), parts[-1]
        if kind in ("add", "replace", "copy", "move"):
            if kind in ("add", "replace"):
                value = copy.deepcopy(op.get("value"))
            else:
                src = _pointer(op["from"], where)
                value = copy.deepcopy(_walk_to(obj, src, where))
                if kind == "move":
                    sparent = _walk_to(obj, src[:-1], where)
                    del sparent[int(src[-1]) if isinstance(sparent, list) else src[-1]]
            if isinstance(parent, list):
                if last == "-":
                    parent.append(value)
                elif kind == "replace":
                    _walk_to(parent, [last], where)
                    parent[int(last)] = value
                else:
                    parent.insert(int(last), value)
            else:
                if kind == "replace" and last not in parent:
                    raise RenderError(f"{where}: replace of a missing {op['path']}")
                parent[last] = value
        elif kind == "remove":
            _walk_to(parent, [last], where)
            del parent[int(last) if isinstance(parent, list) else last]
        elif kind == "test":
            if _walk_to(parent, [last], where) != op.get("value"):
                raise RenderError(f"{where}: test of {op['path']} failed")
        else:
            raise RenderError(f"{where}: unknown JSON 6902 op {kind!r}")


# --- the other transformers ---------------------------------------------------------------------------


def _set_namespace(objs: list[Obj], namespace: str) -> None:
    for obj in objs:
        if obj["kind"] in CLUSTER_SCOPED:
            continue
        obj["metadata"]["namespace"] = namespace
        if obj["kind"] in ("RoleBinding", "ClusterRoleBinding"):
            for subject in obj.get("subjects") or []:
                if (
                    subject.get("kind") == "ServiceAccount"
                    and subject.get("namespace", "default") == "default"
                ):
                    subject["namespace"] = namespace


def _add_labels(objs: list[Obj], spec: Obj, kfile: Path) -> None:
    unknown = set(spec) - {"pairs", "includeSelectors", "includeTemplates"}
    if unknown or spec.get("includeSelectors"):
        raise RenderError(
            f"{kfile}: labels with {sorted(unknown) or 'includeSelectors: true'} not supported "
            "(selectors are immutable: keep them explicit in each manifest)"
        )
    pairs = spec.get("pairs") or {}
    for obj in objs:
        obj["metadata"].setdefault("labels", {}).update(pairs)
        if spec.get("includeTemplates"):
            for path in TEMPLATE_LABEL_PATHS.get(obj["kind"], []):
                node: Any = obj
                for p in path:
                    node = node.setdefault(p, {})
                node.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
            if obj["kind"] == "StatefulSet":
                for claim in _get(obj, "spec", "volumeClaimTemplates") or []:
                    claim.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)


def _set_replicas(objs: list[Obj], spec: Obj, kfile: Path) -> None:
    matched = [o for o in objs if o["kind"] in REPLICATED and o["metadata"]["name"] == spec.get("name")]
    if not matched:
        raise RenderError(f"{kfile}: replicas: no Deployment or StatefulSet named {spec.get('name')!r}")
    for obj in matched:
        obj.setdefault("spec", {})["replicas"] = int(spec["count"])


def _split_image(image: str) -> tuple[str, str | None, str | None]:
    """(name, tag, digest) of an image reference."""
    digest = None
    if "@" in image:
        image, digest = image.split("@", 1)
    name, tag = image, None
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = image.rsplit(":", 1)
    return name, tag, digest


def _containers(node: Any) -> Iterator[Obj]:
    """Every container of every pod template anywhere in an object."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("containers", "initContainers", "ephemeralContainers") and isinstance(v, list):
                yield from (c for c in v if isinstance(c, dict))
            else:
                yield from _containers(v)
    elif isinstance(node, list):
        for v in node:
            yield from _containers(v)


def _set_image(objs: list[Obj], spec: Obj, kfile: Path) -> None:
    unknown = set(spec) - {"name", "newName", "newTag", "digest"}
    if unknown:
        raise RenderError(f"{kfile}: images fields {sorted(unknown)} not supported")
    for obj in objs:
        for c in _containers(obj):
            name, tag, digest = _split_image(str(c.get("image", "")))
            if name != spec["name"]:
                continue
            name = spec.get("newName", name)
            if "digest" in spec:
                c["image"] = f"{name}@{spec['digest']}"
            else:
                tag = spec.get("newTag", tag)
                c["image"] = (
                    name
                    + (f":{tag}" if tag else "")
                    + (f"@{digest}" if digest and "newTag" not in spec else "")
                )


def to_yaml(objs: list[Obj]) -> str:
    return yaml.safe_dump_all(objs, sort_keys=False, width=110)


# ======================================================================================================
# Validation
# ======================================================================================================


@dataclass
class Problem:
    overlay: str
    obj: str
    message: str

    def __str__(self) -> str:
        return f"{self.overlay}: {self.obj}: {self.message}"


@dataclass
class Report:
    overlay: str
    objects: list[Obj] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def add(self, obj: Obj | str, message: str) -> None:
        self.problems.append(Problem(self.overlay, obj if isinstance(obj, str) else ref(obj), message))


def _kubernetes_validate() -> Any:
    import kubernetes_validate
    import kubernetes_validate.utils

    # kubernetes-validate parses its schema files (a 1.4 MB definitions file among them) again for
    # every object; parsed once, a whole overlay validates in a fraction of the time. It only reads them.
    if not hasattr(kubernetes_validate.utils.schema_contents, "cache_info"):
        kubernetes_validate.utils.schema_contents = functools.lru_cache(maxsize=None)(
            kubernetes_validate.utils.schema_contents
        )
    return kubernetes_validate


def schema_problems(report: Report, kubernetes_version: str) -> None:
    kubernetes_validate = _kubernetes_validate()
    for obj in report.objects:
        if obj["kind"] in CRD_CHECKS and _group(obj["apiVersion"]) == CRD_CHECKS[obj["kind"]][0]:
            CRD_CHECKS[obj["kind"]][1](report, obj)
            continue
        try:
            kubernetes_validate.validate(obj, kubernetes_version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            report.add(
                obj,
                f"no Kubernetes {kubernetes_version} schema for {obj['apiVersion']} {obj['kind']} and no "
                "structural check in tools/k8s_validate.py (CRD_CHECKS): add one",
            )
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path) or "(top level)"
            msg = exc.message if len(exc.message) < 300 else exc.message[:300] + "..."
            report.add(obj, f"schema (Kubernetes {kubernetes_version}): {path}: {msg}")


# --- custom resources: structural checks --------------------------------------------------------------


def _get(obj: Any, *path: str) -> Any:
    for p in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(p)
    return obj


def _check_cnpg_cluster(report: Report, obj: Obj) -> None:
    spec = obj.get("spec") or {}
    if obj["apiVersion"] != "postgresql.cnpg.io/v1":
        report.add(obj, f"apiVersion {obj['apiVersion']!r}: CloudNativePG clusters are postgresql.cnpg.io/v1")
    instances = spec.get("instances")
    if not isinstance(instances, int) or instances < 1:
        report.add(obj, f"spec.instances must be a positive integer (got {instances!r})")
    if not _get(spec, "storage", "size"):
        report.add(obj, "spec.storage.size is missing: the instances need persistent volumes")
    image = spec.get("imageName")
    if image:
        _check_image_ref(report, obj, "spec.imageName", image)
    initdb = _get(spec, "bootstrap", "initdb")
    if not isinstance(initdb, dict) or not initdb.get("database") or not initdb.get("owner"):
        report.add(obj, "spec.bootstrap.initdb needs database and owner (the services' database and role)")
    elif not _get(initdb, "secret", "name"):
        report.add(
            obj, "spec.bootstrap.initdb.secret.name is missing: the owner's password comes from a Secret"
        )
    allowed = {
        "instances", "imageName", "primaryUpdateStrategy", "enableSuperuserAccess", "bootstrap", "postgresql",
        "storage", "walStorage", "affinity", "resources", "plugins", "backup", "monitoring", "description",
        "imageCatalogRef", "minSyncReplicas", "maxSyncReplicas", "managed", "superuserSecret", "certificates",
        "inheritedMetadata", "priorityClassName", "topologySpreadConstraints", "env", "enablePDB",
        "primaryUpdateMethod", "startDelay", "stopDelay", "smartShutdownTimeout", "switchoverDelay",
        "failoverDelay", "logLevel", "serviceAccountTemplate", "projectedVolumeTemplate", "replica",
        "externalClusters", "tablespaces", "ephemeralVolumeSource", "ephemeralVolumesSizeLimit",
    }  # fmt: skip
    for k in sorted(set(spec) - allowed):
        report.add(obj, f"spec.{k}: not a CloudNativePG Cluster field this check knows (typo?)")
    for i, plugin in enumerate(spec.get("plugins") or []):
        if not isinstance(plugin, dict) or not plugin.get("name"):
            report.add(obj, f"spec.plugins[{i}] needs a name")


def _check_scheduled_backup(report: Report, obj: Obj) -> None:
    spec = obj.get("spec") or {}
    schedule = str(spec.get("schedule", ""))
    if len(schedule.split()) != 6:
        report.add(obj, f"spec.schedule {schedule!r}: CloudNativePG schedules have 6 fields (seconds first)")
    if not _get(spec, "cluster", "name"):
        report.add(obj, "spec.cluster.name is missing")
    method = spec.get("method", "barmanObjectStore")
    if method not in ("barmanObjectStore", "volumeSnapshot", "plugin"):
        report.add(obj, f"spec.method {method!r}: one of barmanObjectStore, volumeSnapshot, plugin")
    if method == "plugin" and not _get(spec, "pluginConfiguration", "name"):
        report.add(obj, "spec.method plugin needs spec.pluginConfiguration.name")


def _check_object_store(report: Report, obj: Obj) -> None:
    conf = _get(obj, "spec", "configuration") or {}
    dest = str(conf.get("destinationPath", ""))
    if not re.match(r"^(s3|gs|https?)://", dest):
        report.add(obj, f"spec.configuration.destinationPath {dest!r}: an s3://, gs:// or https:// URL")
    if not any(conf.get(k) for k in ("s3Credentials", "googleCredentials", "azureCredentials")):
        report.add(obj, "spec.configuration needs s3Credentials, googleCredentials or azureCredentials")


# kind -> (API group, check)
CRD_CHECKS: dict[str, tuple[str, Callable[[Report, Obj], None]]] = {
    "Cluster": ("postgresql.cnpg.io", _check_cnpg_cluster),
    "ScheduledBackup": ("postgresql.cnpg.io", _check_scheduled_backup),
    "ObjectStore": ("barmancloud.cnpg.io", _check_object_store),
}


# --- policy -------------------------------------------------------------------------------------------

POD_SPEC_PATHS = {
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}
LONG_RUNNING = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"}
SECRET_ENV = re.compile(r"(PASSWORD|PASSWD|SECRET|TOKEN|PRIVATE_KEY|API_KEY|CREDENTIALS?)$")
URL_WITH_PASSWORD = re.compile(r"://[^/@\s:]+:[^/@\s]+@")


def pod_template(obj: Obj) -> Obj | None:
    path = POD_SPEC_PATHS.get(obj["kind"])
    return _get(obj, *path) if path else None


def _selector_matches(selector: Obj | None, labels: dict[str, str]) -> bool:
    if not selector:
        return False
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _check_image_ref(report: Report, obj: Obj, where: str, image: str, version: str | None = None) -> None:
    name, tag, digest = _split_image(image)
    if not tag and not digest:
        report.add(obj, f"{where}: image {image!r} has no tag: pin a version")
    elif tag == "latest":
        report.add(obj, f"{where}: image {image!r} uses the `latest` tag: pin a version")
    elif name == OUR_IMAGE and version and tag != version and not digest:
        report.add(
            obj, f"{where}: image {image!r}: the tag must be the project version {version} (pyproject.toml)"
        )


def _effective(container: Obj, pod: Obj, key: str) -> Any:
    value = _get(container, "securityContext", key)
    return value if value is not None else _get(pod, "securityContext", key)


def _probe_ports(probe: Obj) -> list[Any]:
    return [
        p
        for p in (
            _get(probe, "grpc", "port"),
            _get(probe, "httpGet", "port"),
            _get(probe, "tcpSocket", "port"),
        )
        if p is not None
    ]


def _check_container(
    report: Report, obj: Obj, pod: Obj, c: Obj, *, init: bool, version: str | None, long_running: bool
) -> None:
    where = f"{'init' if init else ''}container {c.get('name')!r}"
    image = str(c.get("image", ""))
    _check_image_ref(report, obj, where, image, version)
    ours = _split_image(image)[0] == OUR_IMAGE

    res = c.get("resources") or {}
    for kind in ("requests", "limits"):
        for r in ("cpu", "memory"):
            if not _get(res, kind, r):
                report.add(obj, f"{where}: no resources.{kind}.{r}")

    if _effective(c, pod, "runAsNonRoot") is not True:
        report.add(obj, f"{where}: securityContext.runAsNonRoot must be true")
    uid = _effective(c, pod, "runAsUser")
    if uid is None:
        report.add(obj, f"{where}: securityContext.runAsUser is not set: run as an explicit non-root uid")
    elif uid == 0:
        report.add(obj, f"{where}: securityContext.runAsUser is 0 (root)")
    elif ours and uid != OUR_UID:
        report.add(obj, f"{where}: the metermesh image runs as uid {OUR_UID}, not {uid}")
    if _get(c, "securityContext", "privileged") is True:
        report.add(obj, f"{where}: privileged: true is not allowed")
    if _get(c, "securityContext", "allowPrivilegeEscalation") is not False:
        report.add(obj, f"{where}: securityContext.allowPrivilegeEscalation must be false")
    if _get(c, "securityContext", "readOnlyRootFilesystem") is not True:
        report.add(obj, f"{where}: securityContext.readOnlyRootFilesystem must be true")
    drop = _get(c, "securityContext", "capabilities", "drop") or []
    if "ALL" not in drop:
        report.add(obj, f"{where}: securityContext.capabilities.drop must include ALL")
    if _get(c, "securityContext", "capabilities", "add"):
        report.add(obj, f"{where}: securityContext.capabilities.add must be empty")
    seccomp = _get(c, "securityContext", "seccompProfile", "type") or _get(
        pod, "securityContext", "seccompProfile", "type"
    )
    if seccomp not in ("RuntimeDefault", "Localhost"):
        report.add(obj, f"{where}: seccompProfile.type must be RuntimeDefault (pod or container)")
    if ours:
        volumes = {v.get("name"): v for v in pod.get("volumes") or []}
        tmp = [m for m in c.get("volumeMounts") or [] if m.get("mountPath") == "/tmp"]
        if not tmp or "emptyDir" not in volumes.get(tmp[0].get("name"), {}):
            report.add(obj, f"{where}: mount an emptyDir at /tmp (the root filesystem is read-only)")

    earlier: set[str] = set()
    for e in c.get("env") or []:
        name = str(e.get("name", ""))
        for var in re.findall(r"(?<!\$)\$\(([A-Za-z_][A-Za-z0-9_]*)\)", str(e.get("value", ""))):
            if var not in earlier:
                report.add(obj, f"{where}: env {name} refers to $({var}), which is not defined before it")
        earlier.add(name)
        if "value" in e and SECRET_ENV.search(name):
            report.add(obj, f"{where}: env {name} has a literal value: take it from a Secret (secretKeyRef)")
        if "value" in e and URL_WITH_PASSWORD.search(str(e["value"])):
            report.add(obj, f"{where}: env {name} holds a URL with a password: use a Secret")

    if init or not long_running:
        return
    ports = {p.get("containerPort") for p in c.get("ports") or []} | {
        p.get("name") for p in c.get("ports") or []
    }
    grpc_ports = [p.get("containerPort") for p in c.get("ports") or [] if p.get("name") == "grpc"]
    for probe_name in ("readinessProbe", "livenessProbe"):
        probe = c.get(probe_name)
        if not probe:
            report.add(obj, f"{where}: no {probe_name}")
            continue
        for port in _probe_ports(probe):
            if port not in ports:
                report.add(obj, f"{where}: {probe_name} port {port!r} is not one of the container's ports")
        if grpc_ports and _get(probe, "grpc", "port") != grpc_ports[0]:
            report.add(obj, f"{where}: {probe_name} must be a native gRPC probe on port {grpc_ports[0]}")
    args = [str(a) for a in (c.get("args") or [])]
    if MODEL_MODULES & set(args) and not c.get("startupProbe"):
        report.add(obj, f"{where}: loads models at start: needs a startupProbe")


def policy_problems(report: Report, version: str | None, readme: str) -> None:
    objs = report.objects
    by_kind: dict[str, list[Obj]] = {}
    for o in objs:
        by_kind.setdefault(o["kind"], []).append(o)
    names = {k: {o["metadata"]["name"] for o in v} for k, v in by_kind.items()}
    workloads = [o for o in objs if o["kind"] in POD_SPEC_PATHS]
    secrets_used: dict[str, str] = {}
    configmaps_used: dict[str, str] = {}

    # Workloads: containers, pod-level settings, ServiceAccounts.
    for obj in workloads:
        template = pod_template(obj) or {}
        pod = template.get("spec") or {}
        labels = _get(template, "metadata", "labels") or {}
        long_running = obj["kind"] in LONG_RUNNING
        for k in ("hostNetwork", "hostPID", "hostIPC"):
            if pod.get(k):
                report.add(obj, f"{k}: true is not allowed")
        for v in pod.get("volumes") or []:
            if "hostPath" in v:
                report.add(obj, f"volume {v.get('name')!r}: hostPath volumes are not allowed")
            if _get(v, "secret", "secretName"):
                secrets_used[v["secret"]["secretName"]] = ref(obj)
            if _get(v, "configMap", "name"):
                configmaps_used[v["configMap"]["name"]] = ref(obj)
        if not pod.get("containers"):
            report.add(obj, "no containers")
        for c in pod.get("initContainers") or []:
            _check_container(report, obj, pod, c, init=True, version=version, long_running=long_running)
        for c in pod.get("containers") or []:
            _check_container(report, obj, pod, c, init=False, version=version, long_running=long_running)
        for c in [*(pod.get("initContainers") or []), *(pod.get("containers") or [])]:
            for e in c.get("env") or []:
                if _get(e, "valueFrom", "secretKeyRef", "name"):
                    secrets_used[e["valueFrom"]["secretKeyRef"]["name"]] = ref(obj)
                if _get(e, "valueFrom", "configMapKeyRef", "name"):
                    configmaps_used[e["valueFrom"]["configMapKeyRef"]["name"]] = ref(obj)
            for src in c.get("envFrom") or []:
                if _get(src, "secretRef", "name"):
                    secrets_used[src["secretRef"]["name"]] = ref(obj)
                if _get(src, "configMapRef", "name"):
                    configmaps_used[src["configMapRef"]["name"]] = ref(obj)
        sa = pod.get("serviceAccountName")
        if not sa or sa == "default":
            report.add(obj, "no serviceAccountName: give every workload its own ServiceAccount")
        elif sa not in names.get("ServiceAccount", set()):
            report.add(obj, f"serviceAccountName {sa!r}: no such ServiceAccount in the overlay")
        else:
            account = next(o for o in by_kind["ServiceAccount"] if o["metadata"]["name"] == sa)
            ours = any(_split_image(str(c.get("image", "")))[0] == OUR_IMAGE for c in _containers(pod))
            token = pod.get("automountServiceAccountToken", account.get("automountServiceAccountToken", True))
            if ours and token is not False:
                report.add(obj, "automountServiceAccountToken must be false (metermesh never calls the API)")
        if obj["kind"] in REPLICATED | {"DaemonSet"}:
            if not _selector_matches(_get(obj, "spec", "selector"), labels):
                report.add(obj, "spec.selector does not match the pod template's labels")

    # Deployments in prod: a PodDisruptionBudget each; autoscalers where expected.
    pdbs = by_kind.get("PodDisruptionBudget", [])
    hpas = by_kind.get("HorizontalPodAutoscaler", [])
    hpa_targets = {
        (_get(h, "spec", "scaleTargetRef", "kind"), _get(h, "spec", "scaleTargetRef", "name")): h
        for h in hpas
    }
    for h in hpas:
        kind, name = _get(h, "spec", "scaleTargetRef", "kind"), _get(h, "spec", "scaleTargetRef", "name")
        if name not in names.get(kind, set()):
            report.add(h, f"scaleTargetRef {kind}/{name}: no such object in the overlay")
    for obj in by_kind.get("Deployment", []) + by_kind.get("StatefulSet", []):
        labels = _get(pod_template(obj), "metadata", "labels") or {}
        if report.overlay == PROD and not any(
            _selector_matches(_get(p, "spec", "selector"), labels) for p in pdbs
        ):
            report.add(obj, "no PodDisruptionBudget selects its pods (every Deployment needs one in prod)")
        autoscaled = (obj["kind"], obj["metadata"]["name"]) in hpa_targets
        if autoscaled and "replicas" in (obj.get("spec") or {}):
            report.add(
                obj, "spec.replicas is set but a HorizontalPodAutoscaler owns the count: drop replicas"
            )
        if report.overlay == DEV and int(_get(obj, "spec", "replicas") or 1) > 1:
            report.add(obj, "dev runs one replica of everything")
    if report.overlay == PROD:
        for name in sorted(PROD_AUTOSCALED - {n for (k, n) in hpa_targets if k == "Deployment"}):
            report.add(f"Deployment/{name}", "prod needs a HorizontalPodAutoscaler for it")
    if report.overlay == DEV and hpas:
        for h in hpas:
            report.add(h, "dev runs one replica of everything: no autoscalers")
    for p in pdbs:
        if not any(
            _selector_matches(_get(p, "spec", "selector"), _get(pod_template(w), "metadata", "labels") or {})
            for w in workloads
        ):
            report.add(p, "its selector matches no workload's pods")

    # Services: their selectors find pods, their target ports exist there.
    for svc in by_kind.get("Service", []):
        selector = _get(svc, "spec", "selector") or {}
        if not selector:
            report.add(svc, "no spec.selector")
            continue
        pods = [
            pod_template(w)
            for w in workloads
            if _selector_matches({"matchLabels": selector}, _get(pod_template(w), "metadata", "labels") or {})
        ]
        if not pods:
            report.add(svc, f"selector {selector} matches no workload's pods")
            continue
        declared = set()
        for t in pods:
            for c in _get(t, "spec", "containers") or []:
                for p in c.get("ports") or []:
                    declared |= {p.get("containerPort"), p.get("name")}
        for p in _get(svc, "spec", "ports") or []:
            target = p.get("targetPort", p.get("port"))
            if target not in declared:
                report.add(
                    svc, f"port {p.get('name') or p.get('port')}: targetPort {target!r} is no container port"
                )

    # No secret values in the repository; every Secret referenced is one the README tells how to create.
    for s in by_kind.get("Secret", []):
        report.add(
            s,
            "a Secret in the manifests: credentials are created with kubectl (k8s/README.md), never committed",
        )
    for cm in by_kind.get("ConfigMap", []):
        for k, v in (cm.get("data") or {}).items():
            if SECRET_ENV.search(k) or URL_WITH_PASSWORD.search(str(v)):
                report.add(cm, f"data.{k} looks like a credential: put it in a Secret")
    for ing in by_kind.get("Ingress", []):
        for t in _get(ing, "spec", "tls") or []:
            if t.get("secretName"):
                secrets_used[t["secretName"]] = ref(ing)
    for cluster in by_kind.get("Cluster", []):
        name = _get(cluster, "spec", "bootstrap", "initdb", "secret", "name")
        if name:
            secrets_used[name] = ref(cluster)
    for store in by_kind.get("ObjectStore", []):
        creds = _get(store, "spec", "configuration", "s3Credentials") or {}
        for v in creds.values():
            if isinstance(v, dict) and v.get("name"):
                secrets_used[v["name"]] = ref(store)
    for name, user in sorted(secrets_used.items()):
        if name not in readme:
            report.add(user, f"Secret {name!r} is referenced but k8s/README.md does not say how to create it")
    for name, user in sorted(configmaps_used.items()):
        if name not in names.get("ConfigMap", set()):
            report.add(user, f"ConfigMap {name!r} is referenced but not in the overlay")

    # NetworkPolicies: a default deny, and every long-running pod allowed something.
    nps = by_kind.get("NetworkPolicy", [])
    deny = [
        n
        for n in nps
        if _get(n, "spec", "podSelector") == {}
        and {"Ingress", "Egress"} <= set(_get(n, "spec", "policyTypes") or [])
        and not _get(n, "spec", "ingress")
        and not _get(n, "spec", "egress")
    ]
    if not deny:
        report.add(
            "NetworkPolicy/*",
            "no default-deny policy (podSelector {}, policyTypes Ingress and Egress, no rules)",
        )
    for w in workloads:
        if w["kind"] not in LONG_RUNNING:
            continue
        labels = _get(pod_template(w), "metadata", "labels") or {}
        allowing = [
            n
            for n in nps
            if n not in deny
            and _get(n, "spec", "podSelector") != {}
            and _selector_matches(_get(n, "spec", "podSelector"), labels)
        ]
        if deny and not allowing:
            report.add(w, "no NetworkPolicy allows its pods anything: they are cut off by the default deny")

    _wiring_problems(report, by_kind, names)


def _config_values(by_kind: dict[str, list[Obj]]) -> dict[str, tuple[str, Obj]]:
    values: dict[str, tuple[str, Obj]] = {}
    for cm in by_kind.get("ConfigMap", []):
        for k, v in (cm.get("data") or {}).items():
            values[k] = (str(v), cm)
    return values


def _wiring_problems(report: Report, by_kind: dict[str, list[Obj]], names: dict[str, set[str]]) -> None:
    """The settings that tie objects together: URLs and addresses name real Services and ports, stream
    replicas fit the NATS cluster, PostgreSQL has its instances and (in prod) backups."""
    config = _config_values(by_kind)
    services = {s["metadata"]["name"]: s for s in by_kind.get("Service", [])}
    clusters = {c["metadata"]["name"]: c for c in by_kind.get("Cluster", [])}

    def service_host(host: str) -> str:
        return host.split(".")[0]

    for key, (value, cm) in sorted(config.items()):
        if key == "NATS_URL" or key == "DATABASE_URL":
            host = service_host(urlsplit(value).hostname or "")
            cnpg = {f"{c}-{s}" for c in clusters for s in ("rw", "ro", "r")}
            if host not in services and host not in cnpg:
                report.add(cm, f"{key} {value!r}: no Service {host!r} in the overlay")
        host, _, port = value.rpartition(":")
        if re.fullmatch(r"METERMESH_([A-Z]+)_ADDR", key) and host not in ("", "0.0.0.0", "[::]"):
            svc = services.get(service_host(host))
            if svc is None:
                report.add(cm, f"{key} {value!r}: no Service {host!r} in the overlay")
            elif not port.isdigit() or int(port) not in {
                p.get("port") for p in _get(svc, "spec", "ports") or []
            }:
                report.add(cm, f"{key} {value!r}: Service {host} has no port {port}")

    # Each service listens on 0.0.0.0 at its container port; the metrics port scraped is one of them.
    for d in by_kind.get("Deployment", []):
        scrape_port = _get(pod_template(d), "metadata", "annotations", "prometheus.io/port")
        declared = {
            p.get("containerPort") for c in _containers(pod_template(d)) for p in c.get("ports") or []
        }
        if scrape_port is not None and int(scrape_port) not in declared:
            report.add(d, f"annotation prometheus.io/port {scrape_port} is not a containerPort")
        for c in _get(pod_template(d), "spec", "containers") or []:
            ports = {p.get("containerPort") for p in c.get("ports") or []}
            for e in c.get("env") or []:
                if re.fullmatch(r"METERMESH_[A-Z]+_ADDR", str(e.get("name"))) and "value" in e:
                    host, _, port = str(e["value"]).rpartition(":")
                    if host not in ("0.0.0.0", "[::]"):
                        report.add(d, f"{e['name']} {e['value']!r}: listen on 0.0.0.0 inside the pod")
                    if not port.isdigit() or int(port) not in ports:
                        report.add(d, f"{e['name']} {e['value']!r}: port is not a containerPort")

    # NATS: JetStream with fsync on every write; streams no more replicated than there are nodes.
    nats_sets = [
        s
        for s in by_kind.get("StatefulSet", [])
        if any(_split_image(str(c.get("image", "")))[0] == "nats" for c in _containers(s))
    ]
    nats_conf = config.get("nats.conf")
    if not nats_sets or nats_conf is None:
        report.add("StatefulSet/nats", "no NATS StatefulSet with a nats.conf ConfigMap in the overlay")
    else:
        conf, cm = nats_conf
        nodes = int(_get(nats_sets[0], "spec", "replicas") or 1)
        if not re.search(r"^\s*sync_interval:\s*always\s*$", conf, re.M):
            report.add(cm, "nats.conf: JetStream needs `sync_interval: always` (fsync every write)")
        if not re.search(r"^\s*store_dir:", conf, re.M):
            report.add(cm, "nats.conf: JetStream file storage needs store_dir")
        routes = re.findall(r"nats://[^\s\]]+:6222", conf)
        if nodes > 1 and len(routes) != nodes:
            report.add(cm, f"nats.conf lists {len(routes)} cluster routes for {nodes} NATS nodes")
        if nodes == 1 and routes:
            report.add(
                cm, "nats.conf has cluster routes but one NATS node: JetStream would wait for a quorum"
            )
        raw = config.get("METERMESH_STREAM_REPLICAS", ("1", cm))[0]
        replicas = int(raw) if raw.isdigit() else 0
        if not 1 <= replicas <= nodes:
            report.add(
                "ConfigMap/metermesh-config",
                f"METERMESH_STREAM_REPLICAS {raw}: must be 1..{nodes} (NATS nodes)",
            )
        if report.overlay == PROD and (replicas != PROD_STREAM_REPLICAS or nodes != PROD_STREAM_REPLICAS):
            report.add(
                "ConfigMap/metermesh-config",
                f"prod needs {PROD_STREAM_REPLICAS} NATS nodes and METERMESH_STREAM_REPLICAS "
                f"{PROD_STREAM_REPLICAS} (got {nodes} and {raw})",
            )

    # PostgreSQL: a CloudNativePG cluster; prod: three instances and backups.
    if not clusters:
        report.add("Cluster/*", "no CloudNativePG Cluster in the overlay")
    stores = names.get("ObjectStore", set())
    for name, c in clusters.items():
        spec = c.get("spec") or {}
        if report.overlay != PROD:
            continue
        if spec.get("instances") != PROD_DB_INSTANCES:
            report.add(c, f"prod runs {PROD_DB_INSTANCES} PostgreSQL instances (got {spec.get('instances')})")
        plugin = next(
            (p for p in spec.get("plugins") or [] if p.get("name") == "barman-cloud.cloudnative-pg.io"), None
        )
        in_tree = _get(spec, "backup", "barmanObjectStore", "destinationPath")
        if plugin is None and not in_tree:
            report.add(
                c,
                "prod needs backups: the Barman Cloud plugin (spec.plugins) or spec.backup.barmanObjectStore",
            )
        if plugin is not None:
            store = _get(plugin, "parameters", "barmanObjectName")
            if store not in stores:
                report.add(c, f"barman-cloud plugin: ObjectStore {store!r} is not in the overlay")
            if plugin.get("isWALArchiver") is not True:
                report.add(c, "barman-cloud plugin: isWALArchiver must be true (continuous WAL archiving)")
        if not any(_get(b, "spec", "cluster", "name") == name for b in by_kind.get("ScheduledBackup", [])):
            report.add(c, "prod needs a ScheduledBackup for it (base backups)")
    for b in by_kind.get("ScheduledBackup", []):
        if _get(b, "spec", "cluster", "name") not in clusters:
            report.add(b, f"spec.cluster.name {_get(b, 'spec', 'cluster', 'name')!r}: no such Cluster")


# ======================================================================================================
# Driver
# ======================================================================================================


def project_version(root: Path = ROOT) -> str | None:
    path = root / "pyproject.toml"
    if not path.is_file():
        return None
    return tomllib.loads(path.read_text())["project"]["version"]


def overlays(k8s_dir: Path) -> list[Path]:
    return sorted(p.parent for p in (k8s_dir / "overlays").glob("*/kustomization.yaml"))


def validate_tree(
    k8s_dir: Path = K8S_DIR, *, version: str | None = None, kubernetes_version: str = KUBERNETES_VERSION
) -> list[Report]:
    """Renders and checks every overlay; one Report each (a RenderError becomes a problem)."""
    readme = (k8s_dir / "README.md").read_text() if (k8s_dir / "README.md").is_file() else ""
    reports = []
    found = overlays(k8s_dir)
    if not found:
        report = Report("k8s")
        report.add(str(k8s_dir / "overlays"), "no overlays (k8s/overlays/*/kustomization.yaml)")
        return [report]
    for overlay in found:
        report = Report(overlay.name)
        try:
            report.objects = render(overlay)
        except (RenderError, OSError, KeyError, TypeError, ValueError, yaml.YAMLError) as exc:
            report.add("kustomization", f"cannot render: {exc}")
            reports.append(report)
            continue
        schema_problems(report, kubernetes_version)
        policy_problems(report, version, readme)
        reports.append(report)
    return reports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k8s-dir", type=Path, default=K8S_DIR, help="the k8s/ tree (default: %(default)s)")
    parser.add_argument(
        "--kubernetes-version", default=KUBERNETES_VERSION, help="schemas to validate against"
    )
    parser.add_argument("--render", metavar="OVERLAY", help="print the rendered overlay and exit")
    args = parser.parse_args(argv)
    if args.render:
        try:
            print(to_yaml(render(args.k8s_dir / "overlays" / args.render)), end="")
        except RenderError as exc:
            print(f"k8s-validate: {exc}", file=sys.stderr)
            return 1
        return 0
    reports = validate_tree(
        args.k8s_dir, version=project_version(), kubernetes_version=args.kubernetes_version
    )
    total = 0
    for report in reports:
        for problem in report.problems:
            print(problem)
        total += len(report.problems)
        state = "OK" if not report.problems else f"{len(report.problems)} problem(s)"
        print(
            f"k8s-validate: {report.overlay}: {len(report.objects)} objects, Kubernetes "
            f"{args.kubernetes_version} schemas + policy: {state}"
        )
    if total:
        print(f"k8s-validate: FAILED with {total} problem(s)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
