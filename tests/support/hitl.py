"""A person answering Airflow's human-in-the-loop requests through the REST API of a real api-server.

``dag.test()`` runs a DAG in the test process; a HITL task (``ApprovalOperator`` ...) parks in
``awaiting_input`` and the run waits until a response is recorded from outside. ``Respondent``
is that outside: in a thread, it waits for the request through the api-server's public API (on the
same metadata database), lets the test look at the world while the task waits, and answers as a
logged-in user. The test thread stays free to run ``dag.test()``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests


@dataclass
class Answer:
    """What the respondent saw while the task waited, and what the API said to its answer."""

    request: dict[str, Any] = field(default_factory=dict)  # the HITL detail, as the API lists it
    task_states: dict[str, str | None] = field(default_factory=dict)  # the DAG run's, while waiting
    observed: Any = None  # what ``observe()`` returned while waiting
    response: dict[str, Any] = field(default_factory=dict)  # the PATCH's answer
    error: BaseException | None = None


class Respondent:
    """A user of the api-server at ``api_url``, answering HITL requests (simple auth manager login)."""

    def __init__(self, api_url: str, username: str, password: str, timeout: float = 300) -> None:
        self.api = f"{api_url}/api/v2"
        self.auth_url = f"{api_url}/auth/token"
        self.username = username
        self.password = password
        self.timeout = timeout
        self._token: str | None = None

    def headers(self) -> dict[str, str]:
        if self._token is None:
            answer = requests.post(
                self.auth_url, json={"username": self.username, "password": self.password}, timeout=30
            )
            answer.raise_for_status()
            self._token = answer.json()["access_token"]
        return {"Authorization": f"Bearer {self._token}"}

    def get(self, path: str, **params: Any) -> Any:
        answer = requests.get(f"{self.api}{path}", params=params, headers=self.headers(), timeout=30)
        answer.raise_for_status()
        return answer.json()

    def pending(self, dag_id: str, task_id: str) -> dict[str, Any] | None:
        """The request of ``task_id`` awaiting an answer in a run of ``dag_id``, once the task waits."""
        details = self.get(
            f"/dags/{dag_id}/dagRuns/~/hitlDetails", task_id=task_id, response_received="false"
        )["hitl_details"]
        waiting = [d for d in details if d["task_instance"]["state"] == "awaiting_input"]
        assert len(waiting) <= 1, waiting
        return waiting[0] if waiting else None

    def answer_when_asked(
        self, dag_id: str, task_id: str, option: str, observe: Callable[[], Any] = lambda: None
    ) -> tuple[threading.Thread, Answer]:
        """Start a thread that waits for the request, calls ``observe()``, then chooses ``option``."""
        result = Answer()
        thread = threading.Thread(
            target=self._answer, args=(dag_id, task_id, option, observe, result), daemon=True
        )
        thread.start()
        return thread, result

    def _answer(
        self, dag_id: str, task_id: str, option: str, observe: Callable[[], Any], result: Answer
    ) -> None:
        try:
            deadline = time.monotonic() + self.timeout
            while (request := self.pending(dag_id, task_id)) is None:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no request of {dag_id}.{task_id} awaiting input in {self.timeout}s")
                time.sleep(0.5)
            result.request = request
            run_id = request["task_instance"]["dag_run_id"]
            tis = self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
            result.task_states = {ti["task_id"]: ti["state"] for ti in tis}
            result.observed = observe()
            answer = requests.patch(
                f"{self.api}/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/-1/hitlDetails",
                json={"chosen_options": [option], "params_input": {}},
                headers=self.headers(),
                timeout=30,
            )
            answer.raise_for_status()
            result.response = answer.json()
        except BaseException as err:  # reported to the test thread, which asserts on it
            result.error = err
            self._fail_running_runs(dag_id)

    def _fail_running_runs(self, dag_id: str) -> None:
        """Unblock ``dag.test()`` (it waits for an answer that will not come): fail the running runs."""
        try:
            runs = self.get(f"/dags/{dag_id}/dagRuns", state="running")["dag_runs"]
            for run in runs:
                requests.patch(
                    f"{self.api}/dags/{dag_id}/dagRuns/{run['dag_run_id']}",
                    json={"state": "failed"},
                    headers=self.headers(),
                    timeout=30,
                )
        except Exception:
            pass
