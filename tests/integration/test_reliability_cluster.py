"""
The reliability suite on a real cluster: crashes, concurrency, triggerer kills and storage faults.

One real Airflow cluster (api-server, scheduler with LocalExecutor, dag-processor, triggerer) on its
own PostgreSQL database, a real ``mlflow server``, the DAGs of ``tests/cluster_dags``:

* each step of a pipeline has its task process SIGKILLed in the middle of its work, and Airflow
  retries it: the DAG run succeeds with one MLflow run per task, one registered version and one
  alias move;
* five DAG runs evaluate and promote at once: the champion moves along one chain and never to a
  worse model;
* 200 dataset versions land across 20 watched assets while five assets' storage fails and the
  triggerer is SIGKILLed: every version becomes exactly one asset event, consumed by one DAG run;
* a task waiting for its pod (not deferred) is SIGKILLed after the pod finished: the retry takes
  that Job's result through Airflow's task state store and starts no second Job (the pods are the
  test's fake Kubernetes API, played as real local processes).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from steps_for_tests import PAUSE_DIR_ENV, pause_marker
from support.cluster import AirflowCluster
from support.fake_kubernetes import FakeKubernetes
from support.harness import DATABASE_URL_ENV, MlflowServer, log_problems, postgres_base_url
from support.model_fixtures import churn_version, log_churn_model

pytestmark = pytest.mark.slow

TESTS = Path(__file__).parents[1]
DAG_FILE = TESTS / "cluster_dags" / "reliability_dags.py"
WATCHED_ASSETS = 20
VERSIONS_PER_ASSET = 10
FAULTY_ASSETS = 5
QUALITY = {"weak": 0, "medium": 1, "good": 2}


class Env:
    def __init__(
        self, cluster: AirflowCluster, work: Path, mlflow_server: MlflowServer, kube: FakeKubernetes
    ) -> None:
        self.cluster = cluster
        self.kube = kube
        self.work = work
        self.pause_dir = work / "pauses"
        self.watch_root = work / "watched"
        self.mlflow = mlflow_server

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        """Start a DAG run through the REST API, as a user would; return its run id."""
        response = requests.post(
            f"{self.cluster.api_url}/api/v2/dags/{dag_id}/dagRuns",
            json={"logical_date": None, "conf": conf},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        return str(response.json()["dag_run_id"])

    def run_state(self, dag_id: str, run_id: str) -> str | None:
        runs = [r for r in self.cluster.dag_runs(dag_id) if r["run_id"] == run_id]
        return runs[0]["state"] if runs else None

    def wait_finished(self, dag_id: str, run_ids: list[str], timeout: float) -> dict[str, str]:
        def finished() -> dict[str, str] | None:
            states = {run_id: self.run_state(dag_id, run_id) for run_id in run_ids}
            return states if all(s in ("success", "failed") for s in states.values()) else None

        return self.cluster.wait_for(finished, timeout, interval=1, what=f"{dag_id} runs to finish")

    def task_instance(self, dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
        rows = self.cluster._query(
            "SELECT id, state, try_number, start_date, end_date FROM task_instance"
            " WHERE dag_id = %s AND run_id = %s AND task_id = %s AND map_index = -1",
            (dag_id, run_id, task_id),
        )
        assert rows, f"no task instance {dag_id}.{task_id} in {run_id}"
        return rows[0]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, mlflow_server: MlflowServer) -> Iterator[Env]:
    if not postgres_base_url():
        pytest.skip(f"{DATABASE_URL_ENV} is not set: the cluster needs a PostgreSQL metadata DB")
    work = tmp_path_factory.mktemp("reliability-cluster")
    dags = work / "dags"
    dags.mkdir()
    shutil.copy(DAG_FILE, dags / DAG_FILE.name)
    for i in range(WATCHED_ASSETS):
        (work / "watched" / f"data_{i:02d}").mkdir(parents=True)
    extra_env = {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
        "AIRFLOW_CONN_MLFLOW_DEFAULT": mlflow_server.connection_json(),
        PAUSE_DIR_ENV: str(work / "pauses"),
        "ML_TEST_WATCH_ROOT": str(work / "watched"),
        "ML_TEST_WATCHED_ASSETS": str(WATCHED_ASSETS),
        "MLFLOW_LOG_UV_FILES": "false",
        "AIRFLOW_ML_SCRATCH_DIR": str(work / "scratch"),
    }
    with (
        FakeKubernetes() as kube,
        AirflowCluster(
            work / "cluster",
            dags,
            env={**extra_env, "AIRFLOW_CONN_KUBERNETES_DEFAULT": kube.connection_json()},
            parallelism=6,
        ) as cluster,
    ):
        cluster.start()
        cluster.wait_dag_parsed("reliability_watch", watchers=_watchers(), timeout=180)
        yield Env(cluster, work, mlflow_server, kube)


def _watchers() -> list[str]:
    return [f"reliability_watch_{i:02d}" for i in range(WATCHED_ASSETS)]


def task_log_problems(
    cluster: AirflowCluster, dag_id: str, run_id: str, tries: dict[str, int]
) -> dict[str, list[str]]:
    """
    The ERROR (or worse) records and tracebacks in the log files of the given task tries.

    Each try of a task writes JSON lines to ``$AIRFLOW_HOME/logs/dag_id=…/run_id=…/task_id=…/
    attempt=N.log``, with what the task process wrote to its stderr as ERROR records (``task.stderr``).

    :param tries: task id -> try number.
    """
    run_dir = cluster.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}"
    found: dict[str, list[str]] = {}
    for task_id, attempt in tries.items():
        path = run_dir / f"task_id={task_id}" / f"attempt={attempt}.log"
        assert path.is_file(), f"no log file {path}; there are {sorted(map(str, run_dir.rglob('*.log')))}"
        problems = log_problems(path.read_text(errors="replace"))
        if problems:
            found[f"{task_id} (try {attempt})"] = problems
    return found


# -- processes -----------------------------------------------------------------------------------


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process."""
    table: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            table[int(entry.name)] = (ppid, cmdline)
    return table


def task_process(ti_id: str) -> int | None:
    """The task process of a task instance: Airflow titles it ``airflow worker -- <ti id>``."""
    title = f"airflow worker -- {ti_id}"
    found = [pid for pid, (_, cmd) in _processes().items() if cmd.startswith(title)]
    return found[0] if len(found) == 1 else None


def descendants(pid: int) -> set[int]:
    table = _processes()
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        children = {child for child, (parent, _) in table.items() if parent in frontier}
        frontier = children - found
        found |= children
    return found


def warm_child(pid: int) -> bool:
    """Whether the process is a step forked by a warm step server (its task holds its connection)."""
    table = _processes()
    parent = table.get(pid, (0, ""))[0]
    return "airflow_ml_provider.ml.warm" in table.get(parent, (0, ""))[1]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# -- 1. SIGKILL in the middle of each step ---------------------------------------------------------


def test_sigkill_in_the_middle_of_each_step_then_retry_loses_and_repeats_nothing(
    env: Env, mlflow_client: Any, record_property: Any
):
    data_uri = churn_version(env.work / "crash-data", rows=2000, seed=21)
    state_root = env.work / "crash-state"
    model_name = f"crash_{uuid.uuid4().hex[:6]}"
    dag_id = "reliability_crash"
    run_id = env.trigger(
        dag_id, {"data_uri": data_uri, "state_root": str(state_root), "model_name": model_name}
    )

    killed: dict[str, int] = {}
    for point in ("validate", "train", "evaluate", "promote"):
        marker = pause_marker(env.pause_dir, run_id, point)
        env.cluster.wait_for(marker.exists, timeout=300, interval=0.5, what=f"{point} at its pause point")
        ti = env.task_instance(dag_id, run_id, point)
        assert ti["try_number"] == 1 and ti["state"] == "running", ti
        pid = env.cluster.wait_for(
            lambda ti=ti: task_process(str(ti["id"])), timeout=10, what=f"the task process of {point}"
        )
        family = descendants(pid)
        paused = json.loads(marker.read_text())["pid"]
        if point == "promote":  # no step: it pauses in the task process itself
            assert paused == pid
        else:  # the step, in the step environment: a child of the task process, or of the warm server
            assert paused in family or warm_child(paused), (point, paused, family)
            family.add(paused)
        os.kill(pid, signal.SIGKILL)
        env.cluster.wait_for(
            lambda pid=pid, family=family: not alive(pid) and not any(alive(p) for p in family),
            timeout=30,
            what=f"{point}'s task process and its children to be gone",
        )
        killed[point] = len(family)
    # The chief worker (paused) was the task's (its child, or a warm child it held); the other may have finished.
    assert killed["train"] >= 1, "the chief training worker was the task's"

    (state,) = env.wait_finished(dag_id, [run_id], timeout=600).values()
    tis = {t: env.task_instance(dag_id, run_id, t) for t in killed}
    assert state == "success", {t: (ti["state"], ti["try_number"]) for t, ti in tis.items()}
    assert {t: (ti["state"], ti["try_number"]) for t, ti in tis.items()} == {
        t: ("success", 2) for t in killed
    }
    # The successful tries logged no error and no traceback (issue 22): TensorFlow's native INFO and
    # WARNING lines, MLflow's INFO lines, never on the task's stderr (which Airflow logs at ERROR).
    assert task_log_problems(env.cluster, dag_id, run_id, dict.fromkeys(killed, 2)) == {}

    # MLflow: one parent run, one run per task (resumed by try 2), nothing left RUNNING.
    experiment = mlflow_client.get_experiment_by_name(dag_id)
    runs = mlflow_client.search_runs([experiment.experiment_id], f"tags.`airflow.run_id` = '{run_id}'")
    roles = Counter(r.data.tags.get("airflow.role") for r in runs)
    assert roles == {"dag_run": 1, "task": 4}, roles
    tasks = {r.data.tags["airflow.task_id"]: r for r in runs if r.data.tags.get("airflow.role") == "task"}
    assert {t: (r.info.status, r.data.tags["airflow.try_number"]) for t, r in tasks.items()} == {
        t: ("FINISHED", "2") for t in killed
    }
    # Training: one logged model (try 1 died before exporting); evaluation read that one.
    models = mlflow_client.search_logged_models(
        experiment_ids=[experiment.experiment_id],
        filter_string=f"source_run_id = '{tasks['train'].info.run_id}'",
    )
    assert len(models) == 1, [m.model_id for m in models]
    # Artifacts: whole sets, published by try 2.
    validation = {
        a.path.rsplit("/", 1)[-1]
        for a in mlflow_client.list_artifacts(tasks["validate"].info.run_id, "validation")
    }
    assert {"statistics.pb", "anomalies.json", "schema.pbtxt"} <= validation, validation
    evaluation = {
        a.path.rsplit("/", 1)[-1]
        for a in mlflow_client.list_artifacts(tasks["evaluate"].info.run_id, "evaluation")
    }
    assert {"metrics.json", "blessing.json", "thresholds.json"} <= evaluation, evaluation
    assert sorted(p.name for p in (state_root / "schema").iterdir()) == ["schema.pbtxt"]
    # Registry: one version, the champion moved once, to it.
    versions = mlflow_client.search_model_versions(f"name = '{model_name}'")
    assert [v.version for v in versions] == ["1"]
    assert versions[0].source == models[0].model_uri or models[0].model_id in versions[0].source
    # The killed tries' scratch directories were removed by their retries (no finally ran in them).
    assert sorted((env.work / "scratch").iterdir()) == []
    registered = mlflow_client.get_registered_model(model_name)
    assert registered.aliases == {"champion": "1"}
    assert registered.tags["airflow_ml.alias_epoch.champion"] == "1"
    record_property(
        "measured",
        f"4 steps SIGKILLed mid-work (training's {killed['train']} live worker process(es) died with it), each retried once:"
        " DAG run success;"
        " MLflow 1 parent run + 4 task runs (each try 2, FINISHED), 1 logged model;"
        " 1 registered version, champion moved once",
    )


# -- 2. five DAG runs promote at once ------------------------------------------------------------


@pytest.fixture(scope="module")
def churn_models(env: Env) -> dict[str, Any]:
    root = env.work / "churn"
    train_uri = churn_version(root / "train", seed=11)
    eval_uri = churn_version(root / "eval", seed=12)
    models = {q: log_churn_model(env.mlflow.url, "reliability_models", train_uri, q) for q in QUALITY}
    return {"eval_uri": eval_uri, "models": models}


def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    points = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    best = current = 0
    for _, step in points:
        current += step
        best = max(best, current)
    return best


def test_five_dag_runs_at_once_promote_along_one_chain_and_the_champion_never_regresses(
    env: Env,
    churn_models: dict[str, Any],
    mlflow_client: Any,
    mlflow_conn: MlflowServer,
    record_property: Any,
):
    dag_id = "reliability_concurrent"
    name = f"race_{uuid.uuid4().hex[:6]}"

    def conf(quality: str) -> dict[str, Any]:
        return {
            "candidate_uri": churn_models["models"][quality],
            "data_uri": churn_models["eval_uri"],
            "model_name": name,
        }

    # The weak model is the champion (version 1, alias moved once), as a promotion leaves it.
    weak = churn_models["models"]["weak"]
    mlflow_client.create_registered_model(name)
    seeded = mlflow_client.create_model_version(
        name, source=weak, tags={"airflow_ml.candidate_model_uri": weak}, model_id=weak.split("/")[-1]
    )
    mlflow_client.set_registered_model_alias(name, "champion", seeded.version)
    mlflow_client.set_registered_model_tag(name, "airflow_ml.alias_epoch.champion", "1")
    candidates = ["medium", "good", "medium", "good", "good"]
    run_ids = [env.trigger(dag_id, conf(q)) for q in candidates]
    env.wait_finished(dag_id, run_ids, timeout=600)

    evaluate = {r: env.task_instance(dag_id, r, "evaluate") for r in run_ids}
    promote = {r: env.task_instance(dag_id, r, "promote") for r in run_ids}
    assert all(ti["state"] == "success" for ti in evaluate.values()), evaluate
    outcomes = Counter(ti["state"] for ti in promote.values())
    # Clean tries log no error (issue 22); a promotion refused by compare-and-set fails, with an error.
    for run_id in run_ids:
        clean = {"evaluate": 1} | ({"promote": 1} if promote[run_id]["state"] == "success" else {})
        assert task_log_problems(env.cluster, dag_id, run_id, clean) == {}
    overlap = _max_overlap(
        [(ti["start_date"].timestamp(), ti["end_date"].timestamp()) for ti in evaluate.values()]
    )
    assert overlap >= 2, "the evaluations did not run at the same time"

    versions = {v.version: v for v in mlflow_client.search_model_versions(f"name = '{name}'")}
    quality = {
        number: next(
            q for q, uri in churn_models["models"].items() if uri == v.tags["airflow_ml.candidate_model_uri"]
        )
        for number, v in versions.items()
    }
    moves = sorted(
        (v.tags["airflow_ml.promoted_at"], number, v.tags["airflow_ml.replaced_version"])
        for number, v in versions.items()
        if "airflow_ml.promoted_at" in v.tags
    )
    # One chain: each move replaced the version the previous move installed (no lost update)...
    chain = ["1"]
    for _, number, replaced in moves:
        assert replaced == chain[-1], f"move to v{number} replaced v{replaced}, champion was v{chain[-1]}"
        chain.append(number)
    # ...and never to a worse model.
    ranks = [QUALITY[quality[n]] for n in chain]
    assert ranks == sorted(ranks), [(n, quality[n]) for n in chain]
    registered = mlflow_client.get_registered_model(name)
    assert registered.aliases["champion"] == chain[-1]
    # The alias history is that chain exactly: the champion seeded by hand (recorded as a manual
    # move by the first promotion that saw it, which takes one more epoch), then each promotion.
    from airflow_ml_provider.hooks.mlflow import MlflowHook

    history = MlflowHook().alias_history(name)
    assert [(e.from_version, e.to_version, e.kind) for e in history] == [(None, "1", "manual")] + [
        (before, after, "promotion") for before, after in zip(chain, chain[1:], strict=False)
    ]
    assert {e.run_id for e in history[1:]} <= set(run_ids)
    assert registered.tags["airflow_ml.alias_epoch.champion"] == str(len(chain) + 1)
    # A promotion that lost the race is refused (re-evaluate); one whose candidate is the very
    # model that won finds it already the champion (a no-op).
    experiment = mlflow_client.get_experiment_by_name(dag_id)
    decisions = Counter(
        r.data.tags.get("airflow_ml.promotion")
        for r in mlflow_client.search_runs([experiment.experiment_id], "tags.`airflow.task_id` = 'promote'")
        if r.data.tags["airflow.run_id"] in run_ids
    )
    assert decisions["promoted"] == len(chain) - 1, (decisions, chain)
    assert decisions["refused"] == outcomes["failed"], (decisions, outcomes)
    assert decisions["promoted"] + decisions["already_champion"] == outcomes["success"], (decisions, outcomes)
    # A loser that passed the first check together with the winner registered its version, then
    # lost the compare-and-set: that version is tagged refused and never became champion.
    refused_versions = {n for n, v in versions.items() if "airflow_ml.promotion_refused" in v.tags}
    assert not refused_versions & set(chain)
    assert set(versions) == set(chain) | refused_versions
    record_property(
        "measured",
        f"5 DAG runs at once (up to {overlap} evaluations together) from champion weak:"
        f" {decisions['promoted']} promoted, {decisions['already_champion']} found their model already"
        f" champion, {outcomes['failed']} refused by compare-and-set,"
        f" {outcomes['skipped']} not blessed; champion chain {' -> '.join(quality[n] for n in chain)},"
        f" {len(versions)} versions ({len(refused_versions)} refused after registering), {len(chain)} alias moves",
    )


# -- 3. 200 versions, 20 assets, storage faults and a triggerer SIGKILL ----------------------------


def _land(root: Path, version: int) -> None:
    """Write a version the way producers do: hidden folder, data, marker, rename."""
    tmp = root / f".tmp-{version:04d}-{uuid.uuid4().hex[:6]}"
    tmp.mkdir()
    (tmp / "part-0.csv").write_text(f"x,label\n{version},1\n")
    (tmp / "_SUCCESS").touch()
    os.rename(tmp, root / f"version={version:04d}")


def _failed_listings(cluster: AirflowCluster, roots: list[Path], offset: int) -> set[Path]:
    """The roots whose listing the triggerer logged as failed after byte ``offset`` of its log."""
    with cluster.log_path("triggerer").open("rb") as log:
        log.seek(offset)
        text = log.read().decode(errors="replace")
    return {root for root in roots if f"listing {root} failed" in text}


def _land_with_faults(cluster: AirflowCluster, roots: list[Path], faulty: list[Path]) -> float:
    """Land versions 1..10 in every root, one round every ~0.5 s: storage of ``faulty`` breaks at
    round 3 and comes back at round 8; the triggerer is SIGKILLed at round 5 and started again at
    round 7, once it has met the faults. Return how long the triggerer was down (s)."""
    away = {root: root.with_name(root.name + ".away") for root in faulty}
    target = {root: root for root in roots}
    killed_at = restarted_at = 0.0
    for version in range(1, VERSIONS_PER_ASSET + 1):
        if version == 3:  # storage fails: each faulty root becomes a symlink loop (ELOOP)
            for root in faulty:
                os.rename(root, away[root])
                os.symlink(root.name, root)
                target[root] = away[root]
        if version == 5:
            cluster.kill_component("triggerer")
            killed_at = time.monotonic()
        if version == 7:
            offset = cluster.log_path("triggerer").stat().st_size
            cluster.start_component("triggerer")
            restarted_at = time.monotonic()
            # The new triggerer meets the broken storage: every faulty root's listing fails first.
            cluster.wait_for(
                lambda offset=offset: _failed_listings(cluster, faulty, offset) == set(faulty),
                timeout=90,
                what="the restarted triggerer to hit the storage faults",
            )
        if version == 8:  # storage back
            for root in faulty:
                root.unlink()
                os.rename(away[root], root)
                target[root] = root
        for root in roots:
            _land(target[root], version)
        time.sleep(0.5)
    return restarted_at - killed_at


def test_200_versions_across_20_assets_with_storage_faults_and_a_triggerer_kill(
    env: Env, record_property: Any
):
    cluster = env.cluster
    cluster.wait_watchers_running(_watchers(), timeout=120)
    names = {f"reliability_data_{i:02d}" for i in range(WATCHED_ASSETS)}

    def watermarked() -> bool:  # each watcher polled once: what lands from now on is new
        rows = cluster._query(
            "SELECT a.name FROM asset_state_store s JOIN asset a ON a.id = s.asset_id"
            " WHERE s.key LIKE 'airflow_ml.dataset_version.%%' AND s.key NOT LIKE '%%.delivered'"
        )
        return {r["name"] for r in rows} >= names

    cluster.wait_for(watermarked, timeout=60, what="each watcher's first watermark")
    roots = [env.watch_root / f"data_{i:02d}" for i in range(WATCHED_ASSETS)]
    before = {r["run_id"] for r in cluster.dag_runs("reliability_watch")}
    down = _land_with_faults(cluster, roots, roots[:FAULTY_ASSETS])

    expected = {
        (f"reliability_data_{i:02d}", f"{v:04d}")
        for i in range(WATCHED_ASSETS)
        for v in range(1, VERSIONS_PER_ASSET + 1)
    }

    def delivered() -> list[tuple[str, str]]:
        return [
            (e["asset_name"], str((e["extra"] or {}).get("payload", {}).get("version")))
            for e in cluster.asset_events()
            if e["asset_name"].startswith("reliability_data_")
        ]

    cluster.wait_for(
        lambda: set(delivered()) >= expected, timeout=300, interval=1, what="all 200 versions as asset events"
    )
    time.sleep(5)  # a duplicate would show up by now (the watermark commits within 3 s)
    events = delivered()
    counts = Counter(events)
    assert set(counts) == expected, sorted(set(counts) ^ expected)
    assert [e for e, n in counts.items() if n > 1] == []
    # Each event was consumed by exactly one DAG run.
    cluster.wait_for(
        lambda: (
            all(r["state"] in ("success", "failed") for r in cluster.dag_runs("reliability_watch")) or None
        ),
        timeout=180,
        what="the watch DAG's runs to finish",
    )
    consumed = Counter(
        e["id"]
        for run, es in cluster.dag_run_asset_events("reliability_watch").items()
        if run not in before
        for e in es
    )
    event_ids = {e["id"] for e in cluster.asset_events() if e["asset_name"].startswith("reliability_data_")}
    assert set(consumed) == event_ids and set(consumed.values()) == {1}
    runs = [r for r in cluster.dag_runs("reliability_watch") if r["run_id"] not in before]
    assert {r["state"] for r in runs} == {"success"}
    record_property(
        "measured",
        f"200 versions across 20 assets; {FAULTY_ASSETS} roots failing (ELOOP) across a triggerer"
        f" SIGKILL ({down:.0f} s down): 200 asset events (0 missed, 0 twice),"
        f" each consumed by 1 of {len(runs)} DAG runs",
    )


# -- 4. durable: a worker crash after the pod finished ---------------------------------------------


def test_a_task_killed_after_its_pod_finished_takes_that_jobs_result_on_retry(
    env: Env, mlflow_client: Any, record_property: Any
):
    from support.pod_player import PodPlayer

    from airflow_ml_provider.runners.kubernetes_objects import gang_name

    dag_id, namespace, payload = "reliability_durable", "ml-durable", uuid.uuid4().hex
    player = PodPlayer(env.kube, namespace, env.work / "durable-pods")
    run_id = env.trigger(dag_id, {"payload": payload})
    name = gang_name(dag_id, run_id, "echo_in_pod")

    def polled() -> bool:  # the task's wait read the pods once: its next poll is 600 s away
        return any(r.path.endswith(f"/namespaces/{namespace}/pods") for r in env.kube.recorded("GET", "pods"))

    env.cluster.wait_for(polled, timeout=300, interval=0.5, what="the task's first poll of its pod")
    player.play_next().join(timeout=300)
    assert not player.errors, player.errors
    assert player.played == [name]
    assert env.kube.jobs[(namespace, name)]["status"].get("succeeded") == 1
    ti = env.task_instance(dag_id, run_id, "echo_in_pod")
    assert (ti["state"], ti["try_number"]) == ("running", 1), ti
    pid = env.cluster.wait_for(lambda: task_process(str(ti["id"])), timeout=10, what="the task process")
    os.kill(pid, signal.SIGKILL)

    (state,) = env.wait_finished(dag_id, [run_id], timeout=300).values()
    ti = env.task_instance(dag_id, run_id, "echo_in_pod")
    assert (state, ti["state"], ti["try_number"]) == ("success", "success", 2), (state, ti)
    # One Job: try 2 found try 1's (by the uid it stored) finished, and took its result.
    created = [r for r in env.kube.recorded("POST", "jobs") if r.body["metadata"]["name"] == name]
    deleted = [r for r in env.kube.recorded("DELETE", "jobs") if r.path.endswith(f"/{name}")]
    assert (len(created), len(deleted)) == (1, 0), (created, deleted)
    assert task_log_problems(env.cluster, dag_id, run_id, {"echo_in_pod": 2}) == {}
    log_text = (
        env.cluster.home
        / "logs"
        / f"dag_id={dag_id}"
        / f"run_id={run_id}"
        / "task_id=echo_in_pod"
        / "attempt=2.log"
    ).read_text()
    assert "already" in log_text and name in log_text, log_text[-3000:]
    experiment = mlflow_client.get_experiment_by_name(dag_id)
    (task_run,) = mlflow_client.search_runs(
        [experiment.experiment_id], f"tags.`airflow.run_id` = '{run_id}' and tags.`airflow.role` = 'task'"
    )
    assert (task_run.info.status, task_run.data.tags["airflow.try_number"]) == ("FINISHED", "2")
    record_property(
        "measured",
        "task SIGKILLed after its pod finished; try 2 took the Job's result: 1 Job created, 0 deleted",
    )
