"""
Plays a training gang's pods as real local processes, for a :class:`FakeKubernetes` API server.

When the operator's Indexed Job appears, the player checks it against the Kubernetes API models
(the manifest must round-trip through ``V1Job`` unchanged: no misspelled or unknown field), then
starts one process per completion index with the container's command and environment exactly as
the manifest has them, plus what Kubernetes adds (``JOB_COMPLETION_INDEX``). Two substitutions
only: the spec file the downward API would mount is a temporary file, and
``AIRFLOW_ML_WORKER_ADDRESSES`` maps the pods' DNS names (which do not resolve here) to localhost
ports. The pods run while the processes run; then the Job completes, or the first failed process
fails its pod (with its exit code and last lines) and the Job.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from fake_kubernetes import FakeKubernetes

from airflow_ml_provider.ml.training.cluster import ENV_WORKER_ADDRESSES, local_cluster
from airflow_ml_provider.runners.kubernetes_objects import SPEC_ANNOTATION, SPEC_DIR, SPEC_FILE

LOG_LINES = 50


def check_against_api_models(manifest: dict[str, Any], kind: str = "V1Job") -> None:
    """The manifest is a valid ``kind`` as the kubernetes client models it, with nothing lost."""
    import kubernetes.client as k8s
    from kubernetes.client import ApiClient

    client = ApiClient()
    model = client._ApiClient__deserialize(manifest, getattr(k8s, kind))  # type: ignore[attr-defined]
    again = client.sanitize_for_serialization(model)
    assert again == manifest, f"{kind} lost or changed fields:\n{json.dumps(manifest, indent=1)[:3000]}"


def pod_command(container: dict[str, Any], spec_file: Path, result_file: Path) -> list[str]:
    """The container's command as a local process: this Python, a spec file, a result file."""
    _python, *rest = container["command"]
    replace = {f"{SPEC_DIR}/{SPEC_FILE}": str(spec_file), "/tmp/result.json": str(result_file)}
    return [sys.executable, *(replace.get(part, part) for part in rest)]


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
        except BaseException as err:  # surfaced by the test through self.errors
            self.errors.append(err)

    def _play(self, name: str, job: dict[str, Any]) -> None:
        sent = [r.body for r in self.kube.recorded("POST", "jobs") if r.body["metadata"]["name"] == name]
        check_against_api_models(sent[-1])  # what the operator sent, before the server added to it
        services = [
            r.body for r in self.kube.recorded("POST", "services") if r.body["metadata"]["name"] == name
        ]
        check_against_api_models(services[-1], "V1Service")
        template = job["spec"]["template"]
        container = template["spec"]["containers"][0]
        workers = int(job["spec"]["completions"])
        run_dir = self.workdir / name
        run_dir.mkdir(parents=True, exist_ok=True)
        spec_file = run_dir / SPEC_FILE
        spec_file.write_text(template["metadata"]["annotations"][SPEC_ANNOTATION])
        addresses = ",".join(local_cluster(workers))
        procs = []
        for index in range(workers):
            command = pod_command(container, spec_file, run_dir / f"result-{index}.json")
            env = pod_env(container, index, addresses)
            log = (run_dir / f"pod-{index}.log").open("w")
            procs.append((subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT), log))
        self.kube.start_pods(name, self.namespace)
        codes = []
        for proc, log in procs:
            codes.append(proc.wait(timeout=self.patience))
            log.close()
        tails = [
            (run_dir / f"pod-{i}.log").read_text(errors="replace").splitlines()[-LOG_LINES:]
            for i in range(workers)
        ]
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
