"""Scratch directories: a killed process's are removed by the next one on the same host."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_ml_provider.ml import scratch

pytestmark = pytest.mark.unit

KILLED_CHILD = """
import os, signal
from airflow_ml_provider.ml.scratch import make_scratch_dir
path = make_scratch_dir("ml-validation")
open(os.path.join(path, "half-written.csv"), "w").write("a,b\\n1,")
print(path, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(scratch.SCRATCH_DIR_ENV, str(tmp_path / "scratch"))
    return tmp_path / "scratch"


def _killed_child_dir(root: Path) -> Path:
    env = {**os.environ, scratch.SCRATCH_DIR_ENV: str(root)}
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_CHILD], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == -9, proc.stderr
    return Path(proc.stdout.strip())


def test_the_next_scratch_dir_removes_the_one_a_killed_process_left(root: Path):
    left = _killed_child_dir(root)
    assert left.is_dir() and left.parent == root
    mine = Path(scratch.make_scratch_dir("ml-evaluation"))
    assert not left.exists()
    assert mine.is_dir() and str(os.getpid()) in mine.name


def test_live_processes_other_hosts_and_foreign_folders_are_kept(root: Path):
    live = Path(scratch.make_scratch_dir("ml-train"))  # this process: alive
    other_host = root / f"ml-train.another-host.{2**22 + 12345}.abcd1234"
    foreign = root / "someone-elses-folder"
    for path in (other_host, foreign):
        path.mkdir()
    assert scratch.sweep() == []
    assert live.is_dir() and other_host.is_dir() and foreign.is_dir()


def test_the_context_manager_removes_its_directory(root: Path):
    with scratch.scratch_dir("ml-step") as path:
        Path(path, "spec.json").write_text("{}")
    assert not Path(path).exists()
    assert list(root.iterdir()) == []
