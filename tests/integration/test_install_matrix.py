"""
The wheel installs into Airflow environments on every Python Airflow 3.3 supports, beside the
environment's own pandas and numpy (2 or newer), with its kubernetes and tuning extras: Airflow
lists the provider and every module a DAG file, the scheduler, the triggerer or the api-server
loads imports there, without TensorFlow. The tensorflow extra installs its stack on Python 3.11
only (the step environment, `.venv-steps`, which make test builds and uses).

Each environment is new, built with uv from the interpreters pyenv holds on this kind of machine
(uv cannot download interpreters here), the way a platform team would pip install the provider.
"""

from __future__ import annotations

import glob
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
UV = REPO / ".tools" / "bin" / "uv"

# Every module outside the step layer (which runs in the step environment), imported in a new
# interpreter: what Airflow's processes load.
IMPORT_ALL = """
import importlib, pkgutil, sys
import airflow_ml_provider
names = [m.name for m in pkgutil.walk_packages(airflow_ml_provider.__path__, "airflow_ml_provider.")]
outside_steps = [n for n in names if not n.startswith("airflow_ml_provider.ml.") or n.startswith(
    ("airflow_ml_provider.ml.specs", "airflow_ml_provider.ml.registry", "airflow_ml_provider.ml.execute",
     "airflow_ml_provider.ml.__main__", "airflow_ml_provider.ml.scratch"))]
for name in outside_steps:
    importlib.import_module(name)
import numpy, pandas
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"tensorflow", "tensorflow_data_validation",
    "tensorflow_model_analysis", "tf_keras", "apache_beam"})
print(len(outside_steps), pandas.__version__, numpy.__version__, ",".join(heavy) or "-")
"""


def _interpreter(version: str) -> str:
    found = sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python{version}")))
    assert found, f"Python {version} is not under ~/.pyenv/versions (pyenv install {version})"
    return found[-1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([str(UV), "build", "--wheel", "-q", "-o", str(out)], cwd=REPO, check=True, timeout=300)
    [built] = out.glob("airflow_ml_provider-*.whl")
    yield built


@pytest.mark.parametrize("version", ["3.10", "3.12", "3.13"])
def test_the_core_and_its_extras_install_beside_pandas_and_numpy_2(
    version: str, wheel: Path, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    python = str(venv / "bin" / "python")
    subprocess.run(
        [str(UV), "venv", "-q", "--python", _interpreter(version), str(venv)], check=True, timeout=120
    )
    install = [str(UV), "pip", "install", "-q", "--python", python]
    # The Airflow environment's own data libraries first, as on an image that already has them.
    subprocess.run([*install, "pandas>=2", "numpy>=2"], check=True, timeout=600)
    subprocess.run([*install, f"{wheel}[kubernetes,tuning,tensorflow]"], check=True, timeout=600)

    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path / "airflow_home")}
    for name in [n for n in env if n.startswith("AIRFLOW__")]:
        del env[name]  # this session's configuration (its database) is not the new environment's
    done = subprocess.run([python, "-c", IMPORT_ALL], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    modules, pandas_version, numpy_version, heavy = done.stdout.split()[-4:]
    assert int(modules) > 50
    assert int(pandas_version.split(".")[0]) >= 2 and int(numpy_version.split(".")[0]) >= 2
    assert heavy == "-"  # nothing of the TensorFlow stack was loaded ...
    freeze = subprocess.run([str(UV), "pip", "freeze", "--python", python], capture_output=True, text=True)
    installed = {line.split("==")[0].lower() for line in freeze.stdout.splitlines()}
    # ... nor installed: the tensorflow extra's stack is for a Python 3.11 step environment only.
    assert not installed & {
        "tensorflow",
        "tensorflow-data-validation",
        "tensorflow-model-analysis",
        "tf-keras",
    }
    assert {"apache-airflow-providers-cncf-kubernetes", "optuna"} <= installed

    providers = subprocess.run(
        [str(venv / "bin" / "airflow"), "providers", "list", "-o", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert providers.returncode == 0, providers.stderr[-3000:]
    assert '"package_name": "airflow-ml-provider"' in providers.stdout
