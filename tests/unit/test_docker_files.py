"""
The container files agree with each other, with uv.lock and pyproject.toml, and with their README.

No Docker engine exists here, so nothing is built; these checks catch what a build or a
`docker compose up` would trip over later: a version bumped in the lock but not in an image, an
extra that does not exist, a service that points at a database nobody creates, a connection whose
host is not a service, a README that names what the files no longer have.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
AIRFLOW_SERVICES = {
    "airflow-init": ["db", "migrate"],
    "airflow-apiserver": ["api-server"],
    "airflow-scheduler": ["scheduler"],
    "airflow-dag-processor": ["dag-processor"],
    "airflow-triggerer": ["triggerer"],
}


def _locked(name: str) -> str:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    versions = {p["version"] for p in lock["package"] if p["name"] == name}
    assert len(versions) == 1, f"uv.lock holds {name} {sorted(versions)}"
    return versions.pop()


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _python_minor() -> str:
    match = re.search(r">=\s*(3\.\d+)", _pyproject()["project"]["requires-python"])
    assert match
    return match.group(1)


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def _expand(value: str) -> str:
    """Compose's ${VAR:-default} with the defaults (and required variables as 'set')."""
    value = re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: m.group(2), value)
    return re.sub(r"\$\{(\w+):\?[^}]*\}", "set", value)


def _extras(dockerfile: str) -> set[str]:
    match = re.search(r"airflow_ml_provider-\*\.whl\)\[([\w,]+)\]", (DOCKER / dockerfile).read_text())
    assert match, f"{dockerfile} installs no provider wheel with extras"
    return set(match.group(1).split(","))


def _databases() -> set[str]:
    sql = (DOCKER / "postgres-init.sql").read_text()
    created = set(re.findall(r"CREATE DATABASE (\w+)", sql))
    return created | {_compose()["services"]["postgres"]["environment"]["POSTGRES_DB"]}


def test_the_images_use_the_locked_versions():
    airflow = (DOCKER / "Dockerfile").read_text()
    assert f"ARG AIRFLOW_VERSION={_locked('apache-airflow')}\n" in airflow
    assert f"FROM apache/airflow:${{AIRFLOW_VERSION}}-python{_python_minor()}\n" in airflow
    assert "-c /tmp/dist/constraints.txt" in airflow
    steps = (DOCKER / "Dockerfile.steps").read_text()
    assert f"FROM python:{_python_minor()}-slim\n" in steps
    assert "-c /tmp/dist/constraints.txt" in steps
    mlflow = (DOCKER / "Dockerfile.mlflow").read_text()
    assert f"FROM ghcr.io/mlflow/mlflow:v{_locked('mlflow')}\n" in mlflow
    for name in ("Dockerfile.steps", "Dockerfile.mlflow"):
        pins = re.findall(r"psycopg2-binary==([\d.]+)", (DOCKER / name).read_text())
        assert pins == [_locked("psycopg2-binary")], name


def test_the_images_install_extras_that_exist_and_keep_tensorflow_out_of_airflow():
    extras = set(_pyproject()["project"]["optional-dependencies"])
    assert _extras("Dockerfile") <= extras and _extras("Dockerfile.steps") <= extras
    assert "tensorflow" not in _extras("Dockerfile") and "all" not in _extras("Dockerfile")
    assert {"tensorflow", "tuning"} <= _extras("Dockerfile.steps")
    steps = (DOCKER / "Dockerfile.steps").read_text()
    assert 'ENTRYPOINT ["python", "-m", "airflow_ml_provider.ml"]' in steps
    assert (ROOT / "airflow_ml_provider" / "ml" / "__main__.py").is_file()
    assert re.search(r"^USER [1-9]\d*$", steps, re.MULTILINE), "the step image must not run as root"


def test_make_dist_writes_what_the_images_copy():
    makefile = (ROOT / "Makefile").read_text()
    dist = makefile[makefile.index("\ndist:") :].split("\n\n")[0]
    assert "build --wheel -o dist" in dist
    assert (
        "export --frozen --all-extras --no-dev --no-hashes --no-emit-project > dist/constraints.txt" in dist
    )
    for name in ("Dockerfile", "Dockerfile.steps"):
        assert "COPY" in (DOCKER / name).read_text() and "dist/ /tmp/dist/" in (DOCKER / name).read_text()


def test_compose_services_and_their_wiring():
    compose = _compose()
    services = compose["services"]
    assert set(services) == {"postgres", "mlflow", *AIRFLOW_SERVICES}
    airflow_version = _locked("apache-airflow")
    environments = []
    for name, command in AIRFLOW_SERVICES.items():
        service = services[name]
        assert service["command"] == command, name
        assert service["image"] == f"airflow-ml:{airflow_version}", name
        assert service["build"]["dockerfile"] == "docker/Dockerfile"
        assert (DOCKER / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
        environments.append(service["environment"])
        for dependency in service["depends_on"]:
            assert dependency in services, f"{name} depends on unknown service {dependency}"
        for volume in service["volumes"]:
            source = volume.split(":")[0]
            assert source in compose["volumes"] or (DOCKER / source).exists(), f"{name}: {volume}"
    assert all(env == environments[0] for env in environments), "Airflow services differ in environment"
    env = {k: _expand(str(v)) for k, v in environments[0].items()}

    metadata = re.fullmatch(
        r"postgresql\+psycopg2://airflow:(\w+)@(\w+):5432/(\w+)", env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    )
    assert metadata and metadata.group(2) == "postgres" and metadata.group(3) in _databases()
    assert metadata.group(1) == _expand(services["postgres"]["environment"]["POSTGRES_PASSWORD"])
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
    assert "8080:8080" in services["airflow-apiserver"]["ports"]
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == "set"  # required, never a default in the file
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"

    mlflow_args = dict(a.lstrip("-").split("=", 1) for a in services["mlflow"]["command"][2:] if "=" in a)
    assert services["mlflow"]["command"][:2] == ["mlflow", "server"]
    assert services["mlflow"]["image"] == f"airflow-ml-mlflow:{_locked('mlflow')}"
    backend = re.fullmatch(
        r"postgresql://airflow:[^@]+@postgres:5432/(\w+)", _expand(mlflow_args["backend-store-uri"])
    )
    assert backend and backend.group(1) in _databases()
    port = mlflow_args["port"]
    conn = json.loads(env["AIRFLOW_CONN_MLFLOW_DEFAULT"])
    assert conn["conn_type"] == "mlflow" and conn["host"] == f"http://mlflow:{port}"
    allowed = mlflow_args["allowed-hosts"].split(",")
    assert f"mlflow:{port}" in allowed and f"localhost:{port}" in allowed
    assert (
        conn["extra"]["ui_url"] == f"http://localhost:{port}"
        and f"{port}:{port}" in services["mlflow"]["ports"]
    )
    assert (
        DOCKER / services["mlflow"]["build"]["context"] / services["mlflow"]["build"]["dockerfile"]
    ).is_file()

    tuning = json.loads(env["AIRFLOW_CONN_OPTUNA_DB"])
    assert tuning["conn_type"] == "postgres" and tuning["host"] == "postgres"
    assert tuning["schema"] in _databases() and tuning["password"] == metadata.group(1)


def test_compose_mounts_the_example_dags_where_airflow_reads_them():
    compose = _compose()
    env = compose["services"]["airflow-scheduler"]["environment"]
    mounts = dict(v.split(":")[:2] for v in compose["services"]["airflow-dag-processor"]["volumes"])
    assert mounts["../dags_examples"] == env["AIRFLOW__CORE__DAGS_FOLDER"]
    assert (DOCKER / "../dags_examples").is_dir()


def test_the_readme_names_what_the_files_have():
    readme = (DOCKER / "README.md").read_text()
    compose = _compose()
    for service in compose["services"]:
        assert f"`{service}`" in readme, f"docker/README.md does not describe the service {service}"
    env = compose["services"]["airflow-scheduler"]["environment"]
    for name in env:
        if name.startswith("AIRFLOW_CONN_"):
            assert f"`{name}`" in readme, f"docker/README.md does not name the connection {name}"
    for name in ("Dockerfile", "Dockerfile.steps", "Dockerfile.mlflow"):
        assert f"`{name}`" in readme
    for image in re.findall(
        r"-t ([\w.:-]+) ",
        "\n".join((DOCKER / n).read_text() for n in ("Dockerfile", "Dockerfile.steps", "Dockerfile.mlflow")),
    ):
        assert f"`{image}`" in readme, f"docker/README.md does not name the image {image}"
    assert "make dist" in readme and "AIRFLOW_JWT_SECRET" in readme
    for database in _databases():
        assert f"`{database}`" in readme, f"docker/README.md does not name the database {database}"
