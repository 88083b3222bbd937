"""Dynamic PersistentVolumes on the real node: local-path-provisioner as the default StorageClass.

Claims that name no class (the dataset's claim, a TrainingJob's checkpoint claim) must bind
on the local cluster as they do on kind, whose default class ``standard`` is this same
provisioner: a claim waits for its first pod (``WaitForFirstConsumer``), then a helper pod on
the pod's node makes a directory ``0777`` under :func:`volumes_dir` (so non-root pods can
write: hostPath volumes get no ``fsGroup`` ownership) and the provisioner creates a hostPath
PersistentVolume pinned to that node. Deleting the claim deletes the volume and its directory.

The provisioner (built by ``build.py``, group ``storage``) runs from a scratch image and its
helper pods from the node's busybox image (``realnode``), never pulled. Volumes live in the
node's state directory, which teardown removes with everything else.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from localcluster import netns, realnode
from localcluster.kube import Kubectl, condition_true, wait_until

NAMESPACE = "local-path-storage"
STORAGE_CLASS = "standard"
PROVISIONER = "rancher.io/local-path"
NAME = "local-path-provisioner"
LABELS = {"app.kubernetes.io/name": NAME}


def volumes_dir(inst: netns.Instance) -> Path:
    """Where the node's volumes are made (inside the instance's state, removed at teardown)."""
    return inst.state / "volumes"


def manifests(image: str, helper_image: str, path: Path) -> list[dict[str, Any]]:
    """Namespace, RBAC, config, Deployment and the default StorageClass (pure)."""
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": NAME, "namespace": NAMESPACE}}
    rules = [
        {"apiGroups": [""], "resources": ["nodes", "persistentvolumeclaims", "configmaps"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["persistentvolumes", "pods"],
         "verbs": ["get", "list", "watch", "create", "delete", "patch", "update"]},
        {"apiGroups": [""], "resources": ["endpoints"], "verbs": ["get", "list", "watch", "create", "update", "patch"]},
        {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch", "update"]},
        {"apiGroups": ["storage.k8s.io"], "resources": ["storageclasses"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]},
    ]  # fmt: skip
    config = {"nodePathMap": [{"node": "DEFAULT_PATH_FOR_NON_LISTED_NODES", "paths": [str(path)]}]}
    helper_pod = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "helper-pod"},
        "spec": {"containers": [{"name": "helper-pod", "image": helper_image, "imagePullPolicy": "Never"}],
                 "terminationGracePeriodSeconds": 1},
    }  # fmt: skip
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": NAME, "namespace": NAMESPACE},
        "spec": {"replicas": 1, "selector": {"matchLabels": LABELS}, "template": {
            "metadata": {"labels": LABELS},
            "spec": {
                "serviceAccountName": NAME,
                "containers": [{
                    "name": NAME, "image": image, "imagePullPolicy": "Never",
                    "args": ["--debug", "start", "--config", "/etc/config/config.json",
                             "--helper-image", helper_image, "--service-account-name", NAME],
                    "env": [{"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}],
                    "volumeMounts": [{"name": "config", "mountPath": "/etc/config/"}],
                }],
                "volumes": [{"name": "config", "configMap": {"name": "local-path-config"}}],
            },
        }},
    }  # fmt: skip
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        account,
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": NAME}, "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": NAME},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NAME},
         "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}]},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "local-path-config", "namespace": NAMESPACE},
         "data": {"config.json": json.dumps(config),
                  "setup": '#!/bin/sh\nset -eu\nmkdir -m 0777 -p "$VOL_DIR"\n',
                  "teardown": '#!/bin/sh\nset -eu\nrm -rf "$VOL_DIR"\n',
                  "helperPod.yaml": json.dumps(helper_pod)}},
        deployment,
        {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
         "metadata": {"name": STORAGE_CLASS, "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
         "provisioner": PROVISIONER, "volumeBindingMode": "WaitForFirstConsumer", "reclaimPolicy": "Delete"},
    ]  # fmt: skip


def install(kubectl: Kubectl, path: Path, timeout: float = 120.0) -> None:
    """Apply the provisioner (idempotent) and wait until it runs on the real node."""
    path.mkdir(parents=True, exist_ok=True)
    cluster = kubectl.in_namespace(None)
    cluster.apply(manifests(realnode.LOCAL_PATH_REF, realnode.BUSYBOX_REF, path), "--server-side", "--force-conflicts")
    system = kubectl.in_namespace(NAMESPACE)
    selector = ",".join(f"{k}={v}" for k, v in LABELS.items())

    def ready() -> bool:
        return any(condition_true(p, "Ready") for p in system.get("pods", None, "-l", selector))

    wait_until(ready, timeout, "local-path-provisioner Ready on the real node")
