"""
Plays a Job's pods as real local processes, for a :class:`FakeKubernetes` API server.

When an operator's Job appears, the player checks what the operator sent: the Job, and the
headless Service when it posted one (a gang), against the OpenAPI schema of every Kubernetes
release in :data:`KUBERNETES_VERSIONS` (``kubernetes-validate``, strict: no unknown field, every
type right) and against the client's API models (the manifest must round-trip through ``V1Job`` unchanged).
A Job without a Service (a single step's pod) must not ask for one: no ``subdomain``, no ports.
Then it starts one process per completion index with the container's command and environment
exactly as the manifest has them, plus what Kubernetes adds (``JOB_COMPLETION_INDEX``).

Substitutions only where a pod has what a local process has not: the spec file the downward API
would mount is a file of the pod's own; the paths the provider gives a pod in its private
``/tmp`` (``/tmp/result.json``, the scratch folder :data:`POD_SCRATCH` where steps write their
outputs) are in a folder of the pod's own; ``AIRFLOW_ML_WORKER_ADDRESSES`` maps the pods' DNS
names (which do not resolve here) to localhost ports. The pods run while the processes run; then
the Job completes, or the first failed process fails its pod (with its exit code and last lines)
and the Job.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from airflow_ml_provider.ml.training.cluster import ENV_WORKER_ADDRESSES, local_cluster
from airflow_ml_provider.operators.step import POD_SCRATCH
from airflow_ml_provider.runners.kubernetes_objects import SPEC_ANNOTATION, SPEC_DIR, SPEC_FILE
from support.fake_kubernetes import FakeKubernetes
from support.step_env import step_python

LOG_LINES = 50
# The Kubernetes releases whose OpenAPI schemas the manifests must satisfy: the oldest supported
# (the Job's per-index retries, replacement and failure policies are beta and on by default from
# 1.29) and the newest kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
POD_RESULT_FILE = "/tmp/result.json"


def check_against_api_models(manifest: dict[str, Any], kind: str = "V1Job") -> None:
    """The manifest is a valid ``kind`` as the kubernetes client models it, with nothing lost."""
    import kubernetes.client as k8s
    from kubernetes.client import ApiClient

    client = ApiClient()
    model = client._ApiClient__deserialize(manifest, getattr(k8s, kind))  # type: ignore[attr-defined]
    again = client.sanitize_for_serialization(model)
    assert again == manifest, f"{kind} lost or changed fields:\n{json.dumps(manifest, indent=1)[:3000]}"


def check_against_openapi_schema(manifest: dict[str, Any], version: str = KUBERNETES_VERSIONS[-1]) -> None:
    """The manifest satisfies the strict OpenAPI schema of its kind in Kubernetes ``version``."""
    import kubernetes_validate

    try:
        kubernetes_validate.validate(manifest, version, strict=True)
    except kubernetes_validate.ValidationError as err:  # a jsonschema ValidationError
        where = "/".join(str(p) for p in err.absolute_path)
        said = err.message
        raise AssertionError(
            f"{manifest.get('kind')} {manifest.get('metadata', {}).get('name')} is not a valid "
            f"{manifest.get('apiVersion')} {manifest.get('kind')} of Kubernetes {version}: at {where or '.'}: {said}"
        ) from None


def check_manifest(manifest: dict[str, Any], kind: str) -> None:
    """Both checks: the OpenAPI schema of each of :data:`KUBERNETES_VERSIONS`, and the client models' round trip."""
    for version in KUBERNETES_VERSIONS:
        check_against_openapi_schema(manifest, version)
    check_against_api_models(manifest, kind)


def pod_command(
    container: dict[str, Any], spec_file: Path, result_file: Path, scratch: Path | None = None
) -> list[str]:
    """The container's command as a local process: the step environment's Python (the step image's
    equivalent here), a spec file, a result file."""
    _python, *rest = container["command"]
    replace = {f"{SPEC_DIR}/{SPEC_FILE}": str(spec_file), POD_RESULT_FILE: str(result_file)}
    return [step_python(), *(replace.get(part, _in_scratch(part, scratch)) for part in rest)]


def pod_spec_text(annotation: str, scratch: Path) -> str:
    """The spec a pod reads, with the pod's scratch folder (its private /tmp) in a folder of its own."""

    def mapped(value: Any) -> Any:
        if isinstance(value, str):
            return _in_scratch(value, scratch)
        if isinstance(value, list):
            return [mapped(v) for v in value]
        if isinstance(value, dict):
            return {k: mapped(v) for k, v in value.items()}
        return value

    return json.dumps(mapped(json.loads(annotation)), sort_keys=True)


def _in_scratch(value: str, scratch: Path | None) -> str:
    if scratch is not None and (value == POD_SCRATCH or value.startswith(POD_SCRATCH + "/")):
        return str(scratch) + value[len(POD_SCRATCH) :]
    return value


def pod_env(container: dict[str, Any], index: int, addresses: str) -> dict[str, str]:
    """The container's env plus what Kubernetes adds, with the pods' names mapped to localhost."""
    env = {**os.environ, **{e["name"]: e["value"] for e in container["env"] if "value" in e}}
    env.update({"JOB_COMPLETION_INDEX": str(index), ENV_WORKER_ADDRESSES: addresses})
    env.pop("TF_CONFIG", None)
    return env


class PodPlayer:
    def __init__(self, kube: FakeKubernetes, namespace: str, workdir: Path, patience: float = 300) -> None:
        self.kube, self.namespace, self.workdir, self.patience = kube, namespace, Path(workdir), patience
        self.played: list[str] = []  # the Jobs whose pods ran
        self.errors: list[BaseException] = []
        self._seen: set[str] = set()

    def play_next(self) -> threading.Thread:
        """In the background: wait for a Job not played yet in the namespace, then play its pods."""
        thread = threading.Thread(target=self._guarded, daemon=True)
        thread.start()
        return thread

    def pod_log(self, job: str, index: int = 0) -> str:
        """The whole output of a played pod."""
        return (self.workdir / job / f"pod-{index}.log").read_text(errors="replace")

    def _guarded(self) -> None:
        try:
            deadline = time.monotonic() + self.patience
            while time.monotonic() < deadline:
                with self.kube.lock:
                    fresh = [
                        (name, job)
                        for (ns, name), job in self.kube.jobs.items()
                        if ns == self.namespace and job["metadata"]["uid"] not in self._seen
                    ]
                if fresh:
                    name, job = fresh[0]
                    self._seen.add(job["metadata"]["uid"])
                    self._play(name, json.loads(json.dumps(job)))
                    return
                time.sleep(0.05)
            raise TimeoutError(f"no new Job in namespace {self.namespace} within {self.patience:.0f} s")
        except BaseException as err:  # surfaced by the test through self.errors
            self.errors.append(err)

    def _check_sent(self, name: str) -> None:
        """What the operator sent for Job ``name``, before the server added to it: valid, and consistent."""
        sent = [r.body for r in self.kube.recorded("POST", "jobs") if r.body["metadata"]["name"] == name]
        check_manifest(sent[-1], "V1Job")
        services = [
            r.body for r in self.kube.recorded("POST", "services") if r.body["metadata"]["name"] == name
        ]
        if services:
            check_manifest(services[-1], "V1Service")
            return
        pod = sent[-1]["spec"]["template"]["spec"]
        assert "subdomain" not in pod, f"Job {name} names subdomain {pod['subdomain']!r} but no Service"
        ports = [c.get("ports") for c in pod["containers"] if c.get("ports")]
        assert not ports, f"Job {name} opens ports {ports} but has no Service"

    def _play(self, name: str, job: dict[str, Any]) -> None:
        self._check_sent(name)
        template = job["spec"]["template"]
        container = template["spec"]["containers"][0]
        workers = int(job["spec"]["completions"])
        run_dir = self.workdir / name
        run_dir.mkdir(parents=True, exist_ok=True)
        addresses = ",".join(local_cluster(workers))
        procs = []
        for index in range(workers):
            scratch = run_dir / f"pod-{index}-tmp" / Path(POD_SCRATCH).name
            scratch.parent.mkdir(exist_ok=True)  # the pod's /tmp; the scratch folder is the step's to make
            spec_file = run_dir / f"spec-{index}.json"
            spec_file.write_text(pod_spec_text(template["metadata"]["annotations"][SPEC_ANNOTATION], scratch))
            command = pod_command(container, spec_file, run_dir / f"result-{index}.json", scratch)
            env = pod_env(container, index, addresses)
            log = (run_dir / f"pod-{index}.log").open("w")
            procs.append((subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT), log))
        self.kube.start_pods(name, self.namespace)
        codes = []
        for proc, log in procs:
            codes.append(proc.wait(timeout=self.patience))
            log.close()
        tails = [self.pod_log(name, i).splitlines()[-LOG_LINES:] for i in range(workers)]
        for index, lines in enumerate(tails):
            if codes[index] == 0:
                self.kube.set_log(name, self.namespace, index, lines)
        failed = [i for i, code in enumerate(codes) if code != 0]
        if failed:
            self.kube.fail_pod(
                name,
                self.namespace,
                failed[0],
                exit_code=codes[failed[0]],
                log=tails[failed[0]],
                job_failed=True,
            )
        else:
            self.kube.complete(name, self.namespace)
        self.played.append(name)
