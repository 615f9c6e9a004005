"""
The container files agree with each other, with uv.lock and pyproject.toml, and with their README.

No Docker engine exists here, so nothing is built; these checks catch what a build or a
`docker compose up` would trip over later: a version bumped in the lock but not in an image, an
extra that does not exist, a step environment on the wrong Python or with another wheel or other
constraints than Airflow's (a step refuses a provider version that differs from Airflow's), a venv
copied to another path than its interpreter's, a service that points at a database nobody creates,
a connection whose host is not a service, a README that names what the files no longer have.
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import tomllib
import yaml
from packaging.markers import Marker
from packaging.specifiers import SpecifierSet

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
# The default Python of the official apache/airflow:3.3.2 image (a tag with no -pythonX.Y suffix).
AIRFLOW_PYTHON = "3.12"
WHEEL = "$(ls /tmp/dist/airflow_ml_provider-*.whl)"
CONSTRAINTS = "-c /tmp/dist/constraints.txt"


def _marker_env(python: str) -> dict[str, str]:
    """The marker environment of a Linux image on Python `python` (major.minor)."""
    return {
        "python_version": python,
        "python_full_version": f"{python}.9",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "os_name": "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
    }


def _lock() -> dict[str, Any]:
    return tomllib.loads((ROOT / "uv.lock").read_text())


def _locked(name: str, python: str | None = None) -> str:
    """The version uv.lock pins for `name`; on Python `python` where the lock forks per Python."""
    entries = [p for p in _lock()["package"] if p["name"] == name]
    if python is not None:
        entries = [
            p
            for p in entries
            if not p.get("resolution-markers")
            or any(Marker(m).evaluate(_marker_env(python)) for m in p["resolution-markers"])
        ]
    versions = {p["version"] for p in entries}
    assert len(versions) == 1, f"uv.lock holds {name} {sorted(versions)} (Python {python or 'any'})"
    return versions.pop()


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _step_python() -> str:
    """The step environment's Python: the one the tensorflow extra's markers name."""
    pythons = set()
    for requirement in _pyproject()["project"]["optional-dependencies"]["tensorflow"]:
        pythons.update(re.findall(r"python_version\s*==\s*'(3\.\d+)'", requirement))
    assert len(pythons) == 1, f"the tensorflow extra names Pythons {sorted(pythons)}"
    return pythons.pop()


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def _expand(value: str) -> str:
    """Compose's ${VAR:-default} with the defaults (and required variables as 'set')."""
    value = re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: m.group(2), value)
    return re.sub(r"\$\{(\w+):\?[^}]*\}", "set", value)


def _stages(dockerfile: str) -> list[list[str]]:
    """The Dockerfile's stages, each a list of instructions (continuation lines joined, no comments)."""
    instructions: list[str] = []
    current = ""
    for line in (DOCKER / dockerfile).read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            instructions.append(current.strip())
            current = ""
    stages: list[list[str]] = [[]]  # the first "stage": the ARGs before any FROM
    for instruction in instructions:
        if instruction.startswith("FROM "):
            stages.append([])
        stages[-1].append(instruction)
    return stages


def _installs(stage: list[str]) -> list[tuple[set[str], str]]:
    """The provider-wheel installs of a stage: (extras, the RUN instruction)."""
    found = []
    for instruction in stage:
        for extras in re.findall(r"airflow_ml_provider-\*\.whl\)\[([\w,]+)\]", instruction):
            found.append((set(extras.split(",")), instruction))
    return found


def _arg(stage: list[str], name: str) -> str:
    values = [i.split("=", 1)[1] for i in stage if i.startswith(f"ARG {name}=")]
    assert len(values) == 1, f"ARG {name}: {values}"
    return values[0]


def _env(stage: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in stage:
        if instruction.startswith("ENV "):
            env.update(pair.split("=", 1) for pair in instruction[4:].split())
    return env


def _image_tag(dockerfile: str) -> str:
    tags = re.findall(r"-t ([\w.:/-]+) ", (DOCKER / dockerfile).read_text())
    assert len(tags) == 1, f"{dockerfile} names its image {tags}"
    return tags[0]


def _databases() -> set[str]:
    sql = (DOCKER / "postgres-init.sql").read_text()
    created = set(re.findall(r"CREATE DATABASE (\w+)", sql))
    return created | {_compose()["services"]["postgres"]["environment"]["POSTGRES_DB"]}


def test_the_two_pythons_are_the_ones_the_project_and_the_lock_cover():
    project = _pyproject()
    requires = SpecifierSet(project["project"]["requires-python"])
    environments = project["tool"]["uv"]["environments"]
    for python in (AIRFLOW_PYTHON, _step_python()):
        assert f"{python}.0" in requires, python
        assert f"Programming Language :: Python :: {python}" in project["project"]["classifiers"]
        assert any(Marker(m).evaluate(_marker_env(python)) for m in environments), f"uv.lock skips {python}"
    assert AIRFLOW_PYTHON != _step_python()
    # The forks the images install: the TensorFlow stack's pins on the step Python, newer ones on Airflow's.
    assert _locked("tensorflow", _step_python()) and _locked("pandas", _step_python()).startswith("1.")
    assert int(_locked("pandas", AIRFLOW_PYTHON).split(".")[0]) >= 2
    assert int(_locked("numpy", AIRFLOW_PYTHON).split(".")[0]) >= 2
    # The TensorFlow stack installs on the step Python only: the Airflow image gets none of it.
    for requirement in project["project"]["optional-dependencies"]["tensorflow"]:
        if requirement.startswith(("tensorflow", "tf-keras")):
            assert requirement.endswith(f"; python_version == '{_step_python()}'"), requirement


def test_the_airflow_image_is_the_official_default_python_without_tensorflow():
    stages = _stages("Dockerfile")
    assert _arg(stages[0], "AIRFLOW_VERSION") == _locked("apache-airflow")
    final = stages[-1]
    assert final[0] == "FROM apache/airflow:${AIRFLOW_VERSION}", "the final stage: the official default image"
    for stage in stages[1:]:
        assert "-python" not in stage[0], f"{stage[0]}: the image's default Python ({AIRFLOW_PYTHON}) only"
    [(extras, run)] = _installs(final)
    project_extras = set(_pyproject()["project"]["optional-dependencies"])
    assert extras <= project_extras and extras == {"kubernetes", "tuning"}
    assert "tensorflow" not in extras and "all" not in extras
    assert WHEEL in run and CONSTRAINTS in run and '"apache-airflow==${AIRFLOW_VERSION}"' in run
    assert any(i.startswith("COPY ") and "dist/ /tmp/dist/" in i for i in final)


def test_the_airflow_image_carries_the_step_environment_at_its_own_paths():
    stages = _stages("Dockerfile")
    final = stages[-1]
    step_python = PurePosixPath(_env(final)["AIRFLOW__ML_PROVIDER__STEP_PYTHON"])
    venv = str(step_python.parents[1])
    assert step_python.name == "python" and step_python.parent.name == "bin"

    [builder] = [s for s in stages[1:] if any(venv in i for i in s if i.startswith("RUN "))]
    name = re.fullmatch(r"FROM apache/airflow:\$\{AIRFLOW_VERSION\} AS ([\w-]+)", builder[0])
    assert name, f"the step environment is built on the Airflow image itself: {builder[0]}"
    assert _arg(builder, "STEP_PYTHON_VERSION") == _step_python()
    env = _env(builder)
    interpreters = env["UV_PYTHON_INSTALL_DIR"]
    assert env["UV_PYTHON_PREFERENCE"] == "only-managed"
    run = next(i for i in builder if i.startswith("RUN ") and venv in i)
    assert 'uv python install "${STEP_PYTHON_VERSION}"' in run
    assert f'uv venv --python "${{STEP_PYTHON_VERSION}}" {venv}' in run
    assert f"uv pip install --python {step_python}" in run
    assert f"sys.version_info[:2] == ({_step_python().replace('.', ', ')})" in run

    [(extras, install)] = _installs(builder)
    assert extras == _installs(_stages("Dockerfile.steps")[-1])[0][0], "the step image's extras"
    assert WHEEL in install and CONSTRAINTS in install
    assert any(i.startswith("COPY ") and "dist/ /tmp/dist/" in i for i in builder)

    # A venv works only where its interpreter sits at the path it was created with.
    copies = [i.split()[1:] for i in final if i.startswith(f"COPY --from={name.group(1)} ")]
    assert {(src, dst) for _, src, dst in copies} == {(interpreters, interpreters), (venv, venv)}

    # The uv that builds it: the one the Makefile installs.
    makefile = (ROOT / "Makefile").read_text()
    uv_version = re.search(r"^UV_VERSION := ([\d.]+)$", makefile, re.MULTILINE)
    assert uv_version and _arg(stages[0], "UV_VERSION") == uv_version.group(1)
    assert "FROM ghcr.io/astral-sh/uv:${UV_VERSION} AS uv" in [s[0] for s in stages[1:]]
    assert "COPY --from=uv /uv /usr/local/bin/uv" in builder


def test_the_step_image_is_the_step_python_with_the_same_wheel_and_constraints():
    [_, steps] = _stages("Dockerfile.steps")
    assert steps[0] == f"FROM python:{_step_python()}-slim-bookworm"
    [(extras, run)] = _installs(steps)
    assert extras <= set(_pyproject()["project"]["optional-dependencies"])
    assert {"tensorflow", "tuning"} <= extras and "kubernetes" not in extras
    assert WHEEL in run and CONSTRAINTS in run
    assert any(i.startswith("COPY ") and "dist/ /tmp/dist/" in i for i in steps)
    assert 'ENTRYPOINT ["python", "-m", "airflow_ml_provider.ml"]' in steps
    assert (ROOT / "airflow_ml_provider" / "ml" / "__main__.py").is_file()
    assert re.search(r"^USER [1-9]\d*$", "\n".join(steps), re.MULTILINE), (
        "the step image must not run as root"
    )
    # Tagged with the provider's version: the one a step checks against Airflow's.
    assert _image_tag("Dockerfile.steps") == f"airflow-ml-steps:{_pyproject()['project']['version']}"


def test_the_images_pin_what_the_lock_pins():
    mlflow = _stages("Dockerfile.mlflow")[-1]
    assert mlflow[0] == f"FROM ghcr.io/mlflow/mlflow:v{_locked('mlflow')}"
    assert _image_tag("Dockerfile") == f"airflow-ml:{_locked('apache-airflow')}"
    assert _image_tag("Dockerfile.mlflow") == f"airflow-ml-mlflow:{_locked('mlflow')}"
    for name in ("Dockerfile", "Dockerfile.steps", "Dockerfile.mlflow"):
        pins = re.findall(r"psycopg2-binary==([\d.]+)", (DOCKER / name).read_text())
        assert pins == [_locked("psycopg2-binary")], name


def test_make_dist_writes_what_the_images_copy():
    makefile = (ROOT / "Makefile").read_text()
    dist = makefile[makefile.index("\ndist:") :].split("\n\n")[0]
    assert "build --wheel -o dist" in dist
    # --all-extras: the one file pins both forks (python markers), the tensorflow extra's included.
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


def test_compose_runs_the_steps_in_the_step_environment_and_pods_on_the_step_image():
    env = _compose()["services"]["airflow-scheduler"]["environment"]
    # LocalExecutor tasks run in the scheduler's container: their steps in the image's step venv.
    image_env = _env(_stages("Dockerfile")[-1])
    assert env["AIRFLOW__ML_PROVIDER__STEP_PYTHON"] == image_env["AIRFLOW__ML_PROVIDER__STEP_PYTHON"]
    assert env["AIRFLOW__ML_PROVIDER__STEP_IMAGE"] == _image_tag("Dockerfile.steps")
    assert "AIRFLOW__ML_PROVIDER__DEFAULT_PLACEMENT" not in env  # step_python alone: placement interpreter


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
        if name.startswith(("AIRFLOW_CONN_", "AIRFLOW__ML_PROVIDER__")):
            assert f"`{name}`" in readme, f"docker/README.md does not name {name}"
    for name in ("Dockerfile", "Dockerfile.steps", "Dockerfile.mlflow"):
        assert f"`{name}`" in readme
        assert f"`{_image_tag(name)}`" in readme, f"docker/README.md does not name the image of {name}"
        assert f"docker build -f docker/{name} -t {_image_tag(name)} " in readme
    assert "make dist" in readme and "AIRFLOW_JWT_SECRET" in readme
    for database in _databases():
        assert f"`{database}`" in readme, f"docker/README.md does not name the database {database}"
    step_python = _env(_stages("Dockerfile")[-1])["AIRFLOW__ML_PROVIDER__STEP_PYTHON"]
    assert f"`{PurePosixPath(step_python).parents[1]}`" in readme
    assert f"`python:{_step_python()}-slim-bookworm`" in readme
    assert f"Python {AIRFLOW_PYTHON}" in readme and f"Python {_step_python()}" in readme


def test_the_readme_versions_are_the_locked_ones():
    readme = (DOCKER / "README.md").read_text()
    step = _step_python()
    for name, label in {
        "tensorflow": "TensorFlow",
        "tensorflow-data-validation": "TFDV",
        "tensorflow-model-analysis": "TFMA",
        "pandas": "pandas",
        "numpy": "numpy",
        "pyarrow": "pyarrow",
        "protobuf": "protobuf",
    }.items():
        version = _locked(name, step).split(".")
        named = re.findall(rf"\b{label}\s+(\d[\d.]*\d|\d)\b", readme)
        assert any(version[: len(v.split("."))] == v.split(".") for v in named), (
            f"docker/README.md: the step environment's {label} is {'.'.join(version)}, not in {named}"
        )
    airflow_part = readme[readme.index("**Airflow's**") : readme.index("**the step environment**")]
    for name in ("pandas", "numpy", "pyarrow", "protobuf"):
        major = _locked(name, AIRFLOW_PYTHON).split(".")[0]
        assert re.search(rf"\b{name} {major}\b", airflow_part), (
            f"docker/README.md: Airflow's {name} is {major}"
        )
    # The constraint lines it quotes: the lock's fork for the Python of their marker.
    quoted = re.findall(r"([\w-]+)==([\d.]+) ; python_full_version (==|>=) '(3\.\d+)", readme)
    assert quoted
    for name, version, _, python in quoted:
        assert version == _locked(name, python), f"docker/README.md quotes {name}=={version} for {python}"
