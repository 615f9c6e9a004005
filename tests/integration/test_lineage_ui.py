"""
The "ML lineage" plugin on a real ``airflow api-server``, through its API and in a real browser.

Set-up (once for the module): the example pipeline ``continuous_training`` runs under dag.test()
with real TFDV, TensorFlow, Optuna and TFMA against a real mlflow server, on the session's
PostgreSQL metadata DB: version 1 is tuned, trained, blessed and promoted; version 2 has an extra
column whose *name* is an HTML tag and is stopped by validation; a plain DAG logs nothing to
MLflow (tests/dags/plain_dags.py). Then an api-server starts on that same database with the provider's plugins loaded
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
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("ML_PROVIDER_TEST_ARTIFACTS") or TESTS.parent / "test-artifacts")


@dataclass
class UI:
    cluster: AirflowCluster
    mlflow: MlflowServer
    model: str
    runs: dict[str, str] = field(default_factory=dict)  # promoted / stopped / plain -> run_id
    xcom: dict[str, Any] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.cluster.api_url

    def get(self, route: str, user: str | None = "admin", **params: str) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.token(user)}"} if user else {}
        return requests.get(f"{self.url}/ml-lineage/{route}", params=params, headers=headers, timeout=120)

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
        yield UI(cluster, mlflow_server, model, runs, xcom)


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


def test_in_the_browser_the_run_shows_its_lineage_and_links_lead_to_the_evidence(ui: UI) -> None:
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: `make setup` installs Debian's chromium package"
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    quoted = requests.utils.quote(ui.runs["promoted"], safe="")
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
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "ml-lineage-failure.png"))
            shutil.copy(ui.cluster.log_path("api-server"), ARTIFACTS / "api-server.log")
            raise
        finally:
            browser.close()
    assert dialogs == []
