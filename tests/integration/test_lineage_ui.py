"""
The "ML lineage" plugin on a real ``airflow api-server``, through its API and in a real browser.

Set-up (once for the module): the example pipeline ``continuous_training`` runs under dag.test()
with real TFDV, TensorFlow, Optuna and TFMA against a real mlflow server, on the session's
PostgreSQL metadata DB: version 1 is tuned, trained, blessed and promoted; version 2 has an extra
column whose *name* is an HTML tag and is stopped by validation; a plain DAG logs nothing to
MLflow (tests/dags/plain_dags.py). For the Models page, cheaply through the hook: a second version
of the model is promoted over the DAG's and rolled back (with a reason), and a model with a hostile
name is promoted from the plain DAG. Then an api-server starts on that same database with the provider's plugins loaded
(entry points), the simple auth manager's users and ``tests/support/lineage_auth.py``, which hides
``continuous_training`` from the user ``outsider``.

The browser test drives Debian's chromium (``/usr/bin/chromium``, installed by ``make setup``)
with Playwright, and saves screenshots under test-artifacts/ (``ML_PROVIDER_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import requests
from support.cluster import AirflowCluster
from support.harness import (
    DATABASE_URL_ENV,
    MlflowServer,
    load_dag,
    postgres_base_url,
    run_dag,
    task_states,
    task_xcom,
)

from airflow_ml_provider.ml.datagen import generate_dataset

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TESTS = Path(__file__).parents[1]
EXAMPLES = TESTS.parent / "dags_examples"
DAG_ID = "continuous_training"
PLAIN_DAG = "lineage_plain"
HOSTILE = "<img src=x onerror=alert(1)>"  # a column name: TFDV reports it in the anomaly text
USERS = {"admin": "admin-pw-1", "outsider": "outsider-pw-1"}
ROLLBACK_REASON = "live auc 0.52 < 0.6 for 3 consecutive checks"
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("ML_PROVIDER_TEST_ARTIFACTS") or TESTS.parent / "test-artifacts")


@dataclass
class UI:
    cluster: AirflowCluster
    mlflow: MlflowServer
    model: str
    hostile_model: str
    runs: dict[str, str] = field(default_factory=dict)  # promoted / stopped / plain -> run_id
    xcom: dict[str, Any] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.cluster.api_url

    def get(self, route: str, user: str | None = "admin", **params: str) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.token(user)}"} if user else {}
        return requests.get(f"{self.url}/ml-lineage/{route}", params=params, headers=headers, timeout=120)

    def models(self, route: str, user: str | None = "admin") -> requests.Response:
        """``/ml-models/<route>`` (a model's name quoted by the caller)."""
        headers = {"Authorization": f"Bearer {self.token(user)}"} if user else {}
        return requests.get(f"{self.url}/ml-models/{route}", headers=headers, timeout=120)

    def token(self, user: str | None) -> str:
        assert user
        if user not in self.tokens:
            answer = requests.post(
                f"{self.url}/auth/token", json={"username": user, "password": USERS[user]}, timeout=30
            )
            answer.raise_for_status()
            self.tokens[user] = answer.json()["access_token"]
        return self.tokens[user]


@pytest.fixture(scope="module")
def ui(
    tmp_path_factory: pytest.TempPathFactory, airflow_db: Path, mlflow_server: MlflowServer
) -> Iterator[UI]:
    if not postgres_base_url():
        pytest.skip(f"{DATABASE_URL_ENV} is not set: the api-server needs the PostgreSQL metadata DB")
    work = tmp_path_factory.mktemp("lineage-ui")
    landing = work / "landing"
    model = f"churn_ui_{uuid.uuid4().hex[:6]}"
    params = {"state_root": str(work / "state"), "model_name": model, "epochs": 1, "workers": 1}
    root = landing / "churn_training_data"
    runs: dict[str, str] = {}
    xcom: dict[str, Any] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", mlflow_server.connection_json())
        mp.setenv("AIRFLOW_ML_EXAMPLE_LANDING", str(landing))  # read when the example is parsed
        [v1] = generate_dataset({"root": str(root), "versions": [1], "rows": 1500})["versions"]
        promoted = run_dag(
            load_dag(DAG_ID, EXAMPLES),
            conf={
                **params,
                "tune_trials": 2,
                "dataset_version": {"version": v1["version"], "uri": v1["uri"]},
            },
        )
        runs["promoted"] = promoted.run_id
        xcom = {t: task_xcom(promoted, t) for t in ("tune", "train", "evaluate", "promote")}
        v2 = _hostile_version(Path(v1["uri"]), root / "version=0002")
        stopped = run_dag(
            load_dag(DAG_ID, EXAMPLES),
            conf={**params, "dataset_version": {"version": "0002", "uri": str(v2)}},
        )
        assert task_states(stopped)["validate"] == "skipped"
        runs["stopped"] = stopped.run_id
        runs["plain"] = run_dag(load_dag(PLAIN_DAG)).run_id  # tests/dags/plain_dags.py
        hostile_model = _promote_rollback_and_a_hostile_model(model, runs)

    db_url = os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].replace("+psycopg2", "")
    passwords = work / "passwords.json"
    passwords.write_text(json.dumps(USERS))
    env = {
        "AIRFLOW_CONN_MLFLOW_DEFAULT": mlflow_server.connection_json(),
        "AIRFLOW__CORE__AUTH_MANAGER": "support.lineage_auth.OutsiderAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,outsider:viewer",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
    }
    with AirflowCluster(work / "cluster", EXAMPLES, db_url=db_url, env=env) as cluster:
        cluster.start(components=["api-server"])
        yield UI(cluster, mlflow_server, model, hostile_model, runs, xcom)


def _promote_rollback_and_a_hostile_model(model: str, runs: dict[str, str]) -> str:
    """
    Version 2 of ``model`` (version 1's lineage, dataset version 0003, better metrics) promoted and
    rolled back, as a guard would; and a model named like an HTML tag, promoted from the plain DAG.
    """
    from datetime import datetime, timezone

    from airflow_ml_provider.hooks._registry import MoveRecord
    from airflow_ml_provider.hooks.mlflow import MlflowHook
    from airflow_ml_provider.vocabulary import (
        TAG_EVALUATED_AGAINST,
        TAG_PROMOTED_AT,
        TAG_VERSION_DAG_ID,
        TAG_VERSION_DAG_RUN,
        TAG_VERSION_DATASET_VERSION,
        TAG_VERSION_METRIC_PREFIX,
        TAG_VERSION_RUN_PREFIX,
    )

    hook = MlflowHook()
    v1 = hook.client.get_model_version(model, "1").tags
    tags = {k: v for k, v in v1.items() if k in (TAG_VERSION_DAG_ID, TAG_VERSION_DAG_RUN)}
    # Its evaluation's and infra validation's runs (blessed, serves); no promotion run: no freshness.
    tags.update(
        {k: v for k, v in v1.items() if k.startswith(TAG_VERSION_RUN_PREFIX) and "promotion" not in k}
    )
    tags.update(
        {k: f"{float(v) * 1.03:.6g}" for k, v in v1.items() if k.startswith(TAG_VERSION_METRIC_PREFIX)}
    )
    tags[TAG_VERSION_DATASET_VERSION] = "0003"
    tags[TAG_EVALUATED_AGAINST] = "1"
    hook.register_version(model, f"s3://ui-test/{model}/2", registration_key="ui-test/v2", tags=tags)
    promoted = MoveRecord(
        dag_id=DAG_ID, run_id=runs["promoted"], task_id="promote", dataset_version="0003", reason="Blessed."
    )
    hook.move_alias(model, "2", expected="1", owner="ui-test/promote-v2", record=promoted)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    hook.client.set_model_version_tag(model, "2", TAG_PROMOTED_AT, now)
    guard = MoveRecord(dag_id=DAG_ID, run_id=runs["promoted"], task_id="guard", reason=ROLLBACK_REASON)
    hook.rollback_alias(model, expected="2", record=guard)

    hostile = f"{HOSTILE} {uuid.uuid4().hex[:6]}"
    lineage = {
        TAG_VERSION_DAG_ID: PLAIN_DAG,
        TAG_VERSION_DAG_RUN: runs["plain"],
        f"{TAG_VERSION_METRIC_PREFIX}auc": "0.5",
    }
    hook.register_version(hostile, "s3://ui-test/hostile/1", registration_key="ui-test/hostile", tags=lineage)
    record = MoveRecord(dag_id=PLAIN_DAG, run_id=runs["plain"], reason=HOSTILE)
    hook.move_alias(hostile, "1", expected=None, owner="ui-test/hostile", record=record)
    return hostile


def _hostile_version(source: Path, target: Path) -> Path:
    """Version 1's rows with one more column, named like an HTML tag (a schema anomaly)."""
    target.mkdir(parents=True)
    for csv in source.glob("*.csv"):
        frame = pd.read_csv(csv)
        frame[HOSTILE] = 1
        frame.to_csv(target / csv.name, index=False)
    (target / "_SUCCESS").touch()
    return target


# -- the API ----------------------------------------------------------------------------------


def test_lineage_of_a_tuned_blessed_and_promoted_run(ui: UI) -> None:
    answer = ui.get("api/lineage", dag_id=DAG_ID, run_id=ui.runs["promoted"])
    assert answer.status_code == 200, answer.text
    lineage = answer.json()
    assert not lineage["empty"]
    assert [d["version"] for d in lineage["dataset"]] == ["0001"]
    stages = {s["stage"]: s for s in lineage["stages"]}
    assert [s["stage"] for s in lineage["stages"]] == [
        "validation",
        "tuning",
        "training",
        "evaluation",
        "infra_validation",
        "promotion",
    ]
    assert all(s["status"] == "FINISHED" and s["ok"] for s in lineage["stages"])
    assert all(s["run_url"].startswith(f"{ui.mlflow.url}/#/experiments/") for s in lineage["stages"])

    assert stages["validation"]["details"]["anomaly_count"] == 0
    tuning = stages["tuning"]["details"]
    assert tuning["trials"]["complete"] == 2 and tuning["best"]["run_url"]
    assert tuning["hyperparameters"] == ui.xcom["tune"]  # what training was handed
    assert {p["path"] for p in tuning["plots"]} >= {"tuning/optimization_history.png"}
    training = stages["training"]["details"]
    assert training["hyperparameters"] == {k: str(v) for k, v in ui.xcom["tune"].items()}
    assert training["final_metrics"]["val_auc"] > 0.5
    evaluation = stages["evaluation"]["details"]
    assert evaluation["blessed"] is True and evaluation["baseline"] is None  # the first champion
    assert evaluation["candidate_model_uri"] == ui.xcom["train"]["model_uri"]
    assert {"metric": "auc", "slice": "every slice", "kind": "value", "bound": ">= 0.6"} in evaluation[
        "thresholds"
    ]
    slices = {s["slice"] for s in evaluation["slices"]}
    assert "Overall" in slices and any(s.startswith("region=") for s in slices)
    overall = next(s for s in evaluation["slices"] if s["slice"] == "Overall")
    auc = next(m for m in overall["metrics"] if m["metric"] == "auc")
    assert auc["candidate"] == pytest.approx(ui.xcom["evaluate"]["metrics"]["auc"])
    assert evaluation["report"]["path"] == "evaluation/report.html"
    assert stages["infra_validation"]["details"]["blessed"] is True
    promotion = stages["promotion"]["details"]
    assert (promotion["outcome"], promotion["champion_before"], promotion["champion_after"]) == (
        "promoted",
        None,
        "1",
    )
    assert promotion["champion_now"] == "1"
    assert promotion["version_url"] == f"{ui.mlflow.url}/#/models/{ui.model}/versions/1"
    assert lineage["blessing"]["blessed"] is True


def test_a_run_stopped_by_validation_shows_the_anomaly(ui: UI) -> None:
    lineage = ui.get("api/lineage", dag_id=DAG_ID, run_id=ui.runs["stopped"]).json()
    assert [s["stage"] for s in lineage["stages"]] == ["validation"]
    [validation] = lineage["stages"]
    assert validation["ok"] is False
    anomalies = validation["details"]["anomalies"]
    assert any(a["feature"] == HOSTILE for a in anomalies), anomalies
    assert lineage["blessing"] is None


def test_the_page_escapes_what_the_data_says_and_allows_no_foreign_script(ui: UI) -> None:
    page = ui.get("lineage", dag_id=DAG_ID, run_id=ui.runs["stopped"])
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "&lt;img src=x onerror=alert(1)&gt;" in page.text
    assert HOSTILE not in page.text
    csp = page.headers["content-security-policy"]
    assert (
        "default-src 'none'" in csp
        and "script-src 'sha256-" in csp
        and "unsafe-inline" not in csp.split("script-src")[1]
    )
    assert page.text.count("<script") == 1  # the one script the policy names, which opens MLflow links


def test_the_task_instance_view_shows_that_task_only(ui: UI) -> None:
    page = ui.get("lineage", dag_id=DAG_ID, run_id=ui.runs["promoted"], task_id="promote")
    assert page.status_code == 200
    assert "Promotion" in page.text and "Data validation" not in page.text
    other = ui.get("lineage", dag_id=DAG_ID, run_id=ui.runs["promoted"], task_id="tune_or_train")
    assert "logged no ML record" in other.text


def test_anonymous_requests_are_refused_with_401(ui: UI) -> None:
    run = ui.runs["promoted"]
    for route in ("lineage", "api/lineage"):
        assert ui.get(route, user=None, dag_id=DAG_ID, run_id=run).status_code == 401
    report = {"mlflow_run_id": "0" * 32, "path": "evaluation/report.html"}
    assert ui.get("artifact", user=None, dag_id=DAG_ID, run_id=run, **report).status_code == 401
    forged = requests.get(
        f"{ui.url}/ml-lineage/api/lineage",
        params={"dag_id": DAG_ID, "run_id": run},
        headers={"Authorization": "Bearer not-a-token"},
        timeout=30,
    )
    assert forged.status_code in (401, 403)
    assert "stages" not in forged.text


def test_a_user_who_may_not_read_the_dag_gets_403_and_may_read_others(ui: UI) -> None:
    run = ui.runs["promoted"]
    for route in ("lineage", "api/lineage"):
        answer = ui.get(route, user="outsider", dag_id=DAG_ID, run_id=run)
        assert answer.status_code == 403, answer.text
        assert "stages" not in answer.text
    assert (
        ui.get("api/lineage", user="outsider", dag_id=PLAIN_DAG, run_id=ui.runs["plain"]).status_code == 200
    )


def test_an_unknown_dag_run_is_404_with_a_message(ui: UI) -> None:
    answer = ui.get("api/lineage", dag_id=DAG_ID, run_id="manual__no-such-run")
    assert answer.status_code == 404
    assert "has no DAG run 'manual__no-such-run'" in answer.json()["detail"]
    page = ui.get("lineage", dag_id=DAG_ID, run_id="manual__no-such-run")
    assert page.status_code == 404 and "has no DAG run" in page.text


def test_a_run_without_ml_tasks_is_an_empty_state_not_an_error(ui: UI) -> None:
    answer = ui.get("api/lineage", dag_id=PLAIN_DAG, run_id=ui.runs["plain"])
    assert answer.status_code == 200
    assert answer.json()["empty"] is True and answer.json()["stages"] == []
    page = ui.get("lineage", dag_id=PLAIN_DAG, run_id=ui.runs["plain"])
    assert page.status_code == 200 and "No ML record for this DAG run" in page.text


def test_reports_are_served_sandboxed_and_only_from_the_runs_own_tasks(ui: UI) -> None:
    promoted = ui.get("api/lineage", dag_id=DAG_ID, run_id=ui.runs["promoted"]).json()
    report = next(s for s in promoted["stages"] if s["stage"] == "evaluation")["details"]["report"]
    served = ui.get("artifact", dag_id=DAG_ID, run_id=ui.runs["promoted"], **report)
    assert served.status_code == 200
    assert served.headers["content-type"].startswith("text/html") and "<html" in served.text.lower()
    assert served.headers["content-security-policy"].endswith("sandbox")
    assert "script-src" not in served.headers["content-security-policy"]  # default-src 'none': no script
    run_id = report["mlflow_run_id"]
    for path in ("evaluation/../evaluation/report.html", "step/spec.json", "evaluation/eval_config.pbtxt"):
        answer = ui.get(
            "artifact", dag_id=DAG_ID, run_id=ui.runs["promoted"], mlflow_run_id=run_id, path=path
        )
        assert answer.status_code == 404, path
    # The same MLflow run asked for under another DAG run: not served.
    assert ui.get("artifact", dag_id=DAG_ID, run_id=ui.runs["stopped"], **report).status_code == 404
    # ... nor under a DAG the user may read, to reach one it may not.
    assert (
        ui.get("artifact", user="outsider", dag_id=PLAIN_DAG, run_id=ui.runs["plain"], **report).status_code
        == 404
    )


# -- the Models page --------------------------------------------------------------------------


def test_the_models_page_lists_the_promoted_model_with_its_champion_and_rollback(ui: UI) -> None:
    answer = ui.models("api/models")
    assert answer.status_code == 200, answer.text
    listed = {m["name"]: m for m in answer.json()["models"]}
    mine = listed[ui.model]
    assert (mine["champion"], mine["versions"], mine["rollbacks"], mine["last_move"]) == (
        "1",
        2,
        1,
        "rollback",
    )
    assert mine["dag_ids"] == [DAG_ID] and mine["dataset_version"] == "0001"
    assert ui.hostile_model in listed


def test_a_model_shows_its_timeline_blessing_freshness_and_links(ui: UI) -> None:
    answer = ui.models(f"api/models/{ui.model}")
    assert answer.status_code == 200, answer.text
    model = answer.json()
    assert [(h["kind"], h["from_version"], h["to_version"]) for h in model["history"]] == [
        ("rollback", "2", "1"),
        ("promotion", "1", "2"),
        ("promotion", None, "1"),
    ]
    assert model["rollbacks"][0]["reason"] == ROLLBACK_REASON
    first = model["history"][-1]  # the DAG's own promotion, recorded by PromoteModelOperator
    assert (first["dag_id"], first["run_id"], first["task_id"]) == (DAG_ID, ui.runs["promoted"], "promote")
    run = requests.utils.quote(ui.runs["promoted"], safe="")
    assert first["lineage_url"] == f"/dags/{DAG_ID}/runs/{run}/plugin/ml-lineage"
    v2, v1 = model["versions"]
    assert (v1["dataset_version"], v2["dataset_version"]) == ("0001", "0003")
    assert v1["blessing"] == {"blessed": True, "recorded": True, "infra_blessed": True}
    assert v1["freshness"]["promoted"] > 0  # landing -> champion, from the DAG run's parent run
    assert v1["metrics"]["auc"] == pytest.approx(ui.xcom["evaluate"]["metrics"]["auc"], rel=1e-5)
    assert v1["mlflow_url"] == f"{ui.mlflow.url}/#/models/{ui.model}/versions/1"
    assert v1["aliases"] == ["champion"] and v2["aliases"] == ["previous_champion"] and v2["rolled_back_at"]
    auc = next(c for c in model["trends"] if c["metric"] == "auc")
    assert [(p["version"], p["status"]) for p in auc["points"]] == [("1", "champion"), ("2", "rolled_back")]
    assert len(model["timeline"]["bars"]) == 3 and [m["kind"] for m in model["timeline"]["markers"]] == [
        "rollback"
    ]


def test_the_models_page_needs_a_login_and_read_access_to_the_models_dags(ui: UI) -> None:
    hostile = requests.utils.quote(ui.hostile_model, safe="")
    for route in ("models", "api/models", f"models/{ui.model}", f"api/models/{ui.model}"):
        assert ui.models(route, user=None).status_code == 401, route
    for route in (f"models/{ui.model}", f"api/models/{ui.model}"):
        answer = ui.models(route, user="outsider")
        assert answer.status_code == 403, answer.text
        assert "0001" not in answer.text and ROLLBACK_REASON not in answer.text
    listed = [m["name"] for m in ui.models("api/models", user="outsider").json()["models"]]
    assert ui.model not in listed and ui.hostile_model in listed  # the plain DAG's: readable
    assert ui.models(f"api/models/{hostile}", user="outsider").status_code == 200
    assert ui.models("api/models/no-such-model").status_code == 404


def test_the_models_pages_show_a_hostile_name_as_text(ui: UI) -> None:
    for route in ("models", f"models/{requests.utils.quote(ui.hostile_model, safe='')}"):
        page = ui.models(route)
        assert page.status_code == 200, page.text
        assert HOSTILE not in page.text and "&lt;img src=x onerror=alert(1)&gt;" in page.text
        assert page.text.count("<script") == 1
        assert "script-src 'sha256-" in page.headers["content-security-policy"]


# -- the browser ------------------------------------------------------------------------------


def _wait_for_frame(page: Any, url_part: str, timeout: float = 30.0) -> Any:
    """The page's frame whose address contains ``url_part``, once it has loaded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for frame in page.frames:
            if url_part in frame.url:
                frame.wait_for_load_state()
                return frame
        page.wait_for_timeout(200)
    raise AssertionError(f"no frame at {url_part!r} within {timeout:.0f} s: {[f.url for f in page.frames]}")


BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextmanager
def _browser(ui: UI, failure: str) -> Iterator[tuple[Any, Any]]:
    """``(context, page)`` of a Chromium logged in as admin; on a failure, a screenshot and the api-server's log."""
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: `make browser` installs Debian's chromium package"
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    dialogs: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        try:
            page.goto(f"{ui.url}/")
            page.fill("input[name=username]", "admin")
            page.fill("input[name=password]", USERS["admin"])
            page.click("button[type=submit]")
            page.wait_for_url(lambda u: "/auth/login" not in u, timeout=60_000)
            yield context, page
        except Exception:
            page.screenshot(path=str(ARTIFACTS / failure))
            shutil.copy(ui.cluster.log_path("api-server"), ARTIFACTS / "api-server.log")
            raise
        finally:
            browser.close()
    assert dialogs == []  # no script of the data ran


def test_in_the_browser_the_run_shows_its_lineage_and_links_lead_to_the_evidence(ui: UI) -> None:
    quoted = requests.utils.quote(ui.runs["promoted"], safe="")
    with _browser(ui, "ml-lineage-failure.png") as (context, page):
        # The DAG run page has the plugin's tab; the tab shows the lineage in a frame.
        page.goto(f"{ui.url}/dags/{DAG_ID}/runs/{quoted}")
        page.get_by_role("tab", name="ML lineage").or_(
            page.get_by_role("link", name="ML lineage")
        ).first.click()
        frame = page.frame_locator("iframe[title='ML lineage']")
        for title in ("Data validation", "Hyperparameter tuning", "Training", "Evaluation", "Promotion"):
            frame.get_by_role("heading", name=title, exact=True).wait_for(timeout=60_000)
        frame.get_by_text("Metrics per slice: candidate against baseline").wait_for()
        page.screenshot(path=str(ARTIFACTS / "ml-lineage-dag-run.png"))

        # A link marked ↗ opens MLflow in a new tab, out of the sandboxed frame.
        with context.expect_page() as opened:
            frame.get_by_role("link", name="registered model version ↗").click()
        assert opened.value.url == f"{ui.mlflow.url}/#/models/{ui.model}/versions/1"
        opened.value.close()

        # The evaluation report opens in the frame, served from MLflow's artifacts.
        frame.get_by_role("link", name="Evaluation report (every slice, plots)").click()
        report = _wait_for_frame(page, "/ml-lineage/artifact?")
        assert "evaluation%2Freport.html" in report.url
        report.get_by_text("Failed thresholds", exact=False).or_(
            report.get_by_text("Every threshold is met")
        ).first.wait_for()

        # The task instance's Details tab lists its extra links; one opens the registered version.
        page.goto(f"{ui.url}/dags/{DAG_ID}/runs/{quoted}/tasks/promote/details")
        with context.expect_page() as opened:
            page.get_by_role("link", name="Registered model version", exact=True).click()
        assert opened.value.url == f"{ui.mlflow.url}/#/models/{ui.model}/versions/1"
        opened.value.close()

        # A run stopped by validation: the hostile column name is shown as text, never run.
        stopped = requests.utils.quote(ui.runs["stopped"], safe="")
        page.goto(f"{ui.url}/dags/{DAG_ID}/runs/{stopped}/plugin/ml-lineage")
        frame = page.frame_locator("iframe[title='ML lineage']")
        frame.get_by_text(HOSTILE).first.wait_for(timeout=60_000)
        assert frame.locator("img[src=x]").count() == 0
        page.screenshot(path=str(ARTIFACTS / "ml-lineage-stopped-run.png"))

        # The mlflow connection form, relabelled for people.
        page.goto(f"{ui.url}/connections")
        page.get_by_role("button", name="Add Connection").click()
        page.get_by_label("Connection Type").fill("mlflow")
        page.keyboard.press("Enter")
        for label in (
            "Tracking URI",
            "Username (basic auth)",
            "Password, or token when Username is empty",
        ):
            page.get_by_text(label, exact=True).wait_for(timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "mlflow-connection-form.png"))


def test_in_the_browser_the_models_page_shows_the_timeline_and_leads_to_the_lineage(ui: UI) -> None:
    with _browser(ui, "ml-models-failure.png") as (context, page):
        # The navigation bar has the Models page; it shows the list in a frame.
        page.get_by_role("link", name="Models").or_(page.get_by_role("button", name="Models")).first.click()
        frame = page.frame_locator("iframe[title='Models']")
        frame.get_by_role("heading", name="Models", exact=True).wait_for(timeout=60_000)
        frame.get_by_text(HOSTILE).first.wait_for()  # a name is shown as text, never run
        assert frame.locator("img[src=x]").count() == 0
        frame.get_by_role("link", name=ui.model, exact=True).click()

        # One model: champion, timeline, trend plots, rollback and why, versions.
        frame.get_by_role("heading", name=ui.model, exact=True).wait_for(timeout=60_000)
        for title in ("Champion", "Champion timeline", "Key metrics across versions", "Versions"):
            frame.get_by_role("heading", name=title, exact=True).wait_for()
        frame.get_by_text(ROLLBACK_REASON).first.wait_for()
        assert frame.locator("#timeline svg rect.bar").count() == 3
        assert frame.locator("#trends svg circle.pt.rolled_back").count() >= 1
        page.wait_for_url(f"**/plugin/ml-models/ml-models/models/{ui.model}")  # a link to this view
        page.screenshot(path=str(ARTIFACTS / "ml-models-model.png"))

        # A link marked ↗ opens the version in MLflow in a new tab, out of the sandboxed frame.
        with context.expect_page() as opened:
            frame.locator("#champion").get_by_role("link", name="MLflow version ↗").click()
        assert opened.value.url == f"{ui.mlflow.url}/#/models/{ui.model}/versions/1"
        opened.value.close()

        # The champion's DAG run: its ML lineage tab opens in the Airflow page, not in the frame.
        frame.get_by_role("link", name="ML lineage of its DAG run").click()
        run = requests.utils.quote(ui.runs["promoted"], safe="")
        page.wait_for_url(f"**/dags/{DAG_ID}/runs/{run}/plugin/ml-lineage", timeout=30_000)
        lineage = page.frame_locator("iframe[title='ML lineage']")
        lineage.get_by_role("heading", name="Promotion", exact=True).wait_for(timeout=60_000)

        # The list, and a model with a hostile name, by their addresses in the Airflow UI.
        page.goto(f"{ui.url}/plugin/ml-models")
        frame = page.frame_locator("iframe[title='Models']")
        frame.get_by_role("link", name=ui.model, exact=True).wait_for(timeout=60_000)
        page.screenshot(path=str(ARTIFACTS / "ml-models-list.png"))
        hostile = requests.utils.quote(ui.hostile_model, safe="")
        page.goto(f"{ui.url}/plugin/ml-models/ml-models/models/{hostile}")
        frame.get_by_role("heading", name=ui.hostile_model, exact=True).wait_for(timeout=60_000)
        assert frame.locator("img[src=x]").count() == 0

        # Outside the Airflow UI (the address the demo prints), the whole page at once.
        page.set_viewport_size({"width": 1300, "height": 900})
        page.goto(f"{ui.url}/ml-models/models/{ui.model}")
        page.get_by_role("heading", name="Champion timeline").wait_for()
        page.screenshot(path=str(ARTIFACTS / "ml-models-model-page.png"), full_page=True)
