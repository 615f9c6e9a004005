"""
Checkpoints without TensorFlow: the spec's ``checkpoint`` key, a shared directory as the store (two
slots, the marker last, an upload cut short, a finished store), and the exit code of a worker that
lost its peer.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support.checkpoint_faults import CutShort
from support.checkpoint_faults import save as _save

from airflow_ml_provider.ml.exit_codes import EXIT_FAILED, EXIT_RETRY, GangRestart, lost_peer
from airflow_ml_provider.ml.specs.training import CheckpointSettings, TrainModelSpec
from airflow_ml_provider.ml.training.checkpoint import FsspecStore, TrainingCheckpoints, open_store

pytestmark = pytest.mark.unit

BASE = {"run_fn": "pkg.mod:run_fn", "train_uri": "/data/v1"}


# -- the spec -----------------------------------------------------------------------------------


def test_no_checkpoint_key_means_no_checkpoints():
    assert TrainModelSpec.parse(BASE).checkpoint is None
    assert TrainModelSpec.parse({**BASE, "checkpoint": None}).checkpoint is None


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"every": "epoch", "uri": "s3://b/ckpt"}, CheckpointSettings(every="epoch", uri="s3://b/ckpt")),
        ({"every": 500, "uri": "/shared/ckpt"}, CheckpointSettings(every=500, uri="/shared/ckpt")),
        ({"uri": "/shared/ckpt"}, CheckpointSettings(every="epoch", uri="/shared/ckpt")),
    ],
)
def test_checkpoint_settings_parse(given, expected):
    assert TrainModelSpec.parse({**BASE, "checkpoint": given}).checkpoint == expected


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("epoch", r"train_model: checkpoint must be a dict \{\"every\""),
        ({"every": 0, "uri": "/c"}, r"train_model: checkpoint.every must be 'epoch' or an int > 0 .*got 0"),
        ({"every": True, "uri": "/c"}, r"checkpoint.every must be 'epoch' or an int > 0 .*got True"),
        ({"every": "step", "uri": "/c"}, r"checkpoint.every must be 'epoch' or an int > 0 .*got 'step'"),
        ({"every": "epoch", "uri": ""}, r"checkpoint.uri must be a directory shared by the workers"),
        ({"every": "epoch", "uri": 3}, r"checkpoint.uri must be a directory shared by the workers"),
        ({"every": "epoch", "path": "/c"}, r"checkpoint has unknown keys \['path'\]"),
        (
            {"every": "epoch", "uri": None},
            r"checkpoint.uri is null, which keeps the checkpoints in the task's MLflow run, but the spec names no mlflow.run_id",
        ),
    ],
)
def test_bad_checkpoint_settings_name_the_key(given, message):
    with pytest.raises(ValueError, match=message):
        TrainModelSpec.parse({**BASE, "checkpoint": given})


def test_a_null_uri_keeps_the_checkpoints_in_the_mlflow_run():
    spec = TrainModelSpec.parse(
        {**BASE, "checkpoint": {"every": "epoch", "uri": None}, "mlflow": {"run_id": "r1"}}
    )
    assert spec.checkpoint is not None
    store = open_store(spec.checkpoint, spec.mlflow.run_id, "http://mlflow:5000")
    assert store.location == "MLflow run r1 (checkpoints/)"


# -- a shared directory as the store ------------------------------------------------------------


def _worker(store: Any, tmp: Path, name: str, *, chief: bool = False) -> TrainingCheckpoints:
    return TrainingCheckpoints(store, str(tmp / name / "backup"), every="epoch", is_chief=chief)


def test_two_slots_take_turns_and_every_worker_restores_the_latest(tmp_path):
    uri = str(tmp_path / "store" / "dag" / "run" / "train")
    chief = _worker(FsspecStore(uri), tmp_path, "w0", chief=True)
    assert chief.restore() is None and chief.resumed_from is None
    for epoch in (1, 2, 3):
        _save(chief, f"state {epoch}", epoch)
    store = Path(uri)
    assert sorted(p.name for p in store.iterdir()) == ["latest.json", "slot-0", "slot-1"]
    assert sorted(p.name for p in (store / "slot-0").iterdir()) == [
        "checkpoint", "ckpt-3.data-00000-of-00001", "ckpt-3.index"
    ]  # fmt: skip
    marker = json.loads((store / "latest.json").read_text())
    assert {k: marker[k] for k in ("slot", "epoch", "step", "batch")} == {
        "slot": "slot-0",
        "epoch": 3,
        "step": 30,
        "batch": 0,
    }
    assert marker["files"] == ["checkpoint", "ckpt-3.data-00000-of-00001", "ckpt-3.index"]

    other = _worker(FsspecStore(uri), tmp_path, "w1")
    assert other.restore() == {"epoch": 3, "step": 30}
    assert (other.checkpoint_dir / "ckpt-3.index").read_text() == "state 3"
    _save(other, "not the chief", 4)  # the other workers never upload
    assert json.loads((store / "latest.json").read_text())["epoch"] == 3


class _CutShort(CutShort, FsspecStore):
    """Dies after uploading ``files_before_death`` files (a chief killed mid-upload)."""


@pytest.mark.parametrize("uploaded", [0, 2, 3])
def test_an_upload_cut_short_leaves_the_previous_checkpoint(tmp_path, uploaded):
    uri = str(tmp_path / "store")
    store = _CutShort(uri)
    chief = _worker(store, tmp_path, "w0", chief=True)
    _save(chief, "first", 1)
    _save(chief, "second", 2)
    store.files_before_death = uploaded
    if uploaded < 3:
        with pytest.raises(KeyboardInterrupt):
            _save(chief, "third", 3)
    else:  # every file arrived, the marker did not
        store.write_marker = lambda marker: (_ for _ in ()).throw(KeyboardInterrupt())  # type: ignore[method-assign]
        with pytest.raises(KeyboardInterrupt):
            _save(chief, "third", 3)
    restarted = _worker(FsspecStore(uri), tmp_path, "again")
    assert restarted.restore() == {"epoch": 2, "step": 20}
    assert sorted(p.name for p in restarted.checkpoint_dir.iterdir()) == [
        "checkpoint", "ckpt-2.data-00000-of-00001", "ckpt-2.index"
    ]  # fmt: skip
    assert (restarted.checkpoint_dir / "ckpt-2.index").read_text() == "second"


class _Unreachable(FsspecStore):
    def put_file(self, local: Path, slot: str, name: str) -> None:
        raise OSError("connection refused")

    def finish(self) -> None:
        raise OSError("connection refused")


def test_a_store_that_cannot_be_reached_warns_and_training_goes_on(tmp_path, caplog):
    uri = str(tmp_path / "store")
    chief = _worker(FsspecStore(uri), tmp_path, "w0", chief=True)
    _save(chief, "first", 1)
    chief.store = _Unreachable(uri)
    _save(chief, "second", 2)  # no exception: training goes on
    chief.finish()
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert said[0].startswith(
        f"Could not upload the checkpoint of epoch 2 to {uri} (OSError: connection refused)"
    )
    assert said[1].startswith(
        f"Could not mark the checkpoints in {uri} finished (OSError: connection refused)"
    )
    assert _worker(FsspecStore(uri), tmp_path, "w1").restore() == {"epoch": 1, "step": 10}


def test_a_finished_store_is_not_resumed(tmp_path):
    uri = str(tmp_path / "store" / "task")
    chief = _worker(FsspecStore(uri), tmp_path, "w0", chief=True)
    _save(chief, "state", 1)
    _worker(FsspecStore(uri), tmp_path, "w1").finish()  # only the chief finishes
    assert Path(uri).is_dir()
    chief.finish()
    assert not Path(uri).exists()
    rerun = _worker(FsspecStore(uri), tmp_path, "rerun", chief=True)
    assert rerun.restore() is None and not any(rerun.checkpoint_dir.iterdir())


@pytest.mark.parametrize(
    "marker",
    [
        "not json",
        json.dumps([1]),
        json.dumps({"slot": "slot-9", "files": ["a"], "epoch": 1}),
        json.dumps({"slot": "slot-0", "files": ["../../etc/passwd"], "epoch": 1}),
        json.dumps({"slot": "slot-0", "files": ["/abs"], "epoch": 1}),
        json.dumps({"slot": "slot-0", "files": ["a"], "epoch": "1"}),
    ],
)
def test_a_marker_this_provider_did_not_write_is_refused(tmp_path, marker):
    store = tmp_path / "store"
    store.mkdir()
    (store / "latest.json").write_text(marker)
    with pytest.raises(ValueError, match=r"The checkpoint marker latest.json in .* delete it"):
        _worker(FsspecStore(str(store)), tmp_path, "w0").restore()


# -- a worker that lost its peer ----------------------------------------------------------------


def _tf_error(name: str, module: str = "tensorflow.python.framework.errors_impl") -> BaseException:
    return type(name, (RuntimeError,), {"__module__": module})("peer gone")


@pytest.mark.parametrize(
    "name", ["UnavailableError", "AbortedError", "CancelledError", "DeadlineExceededError"]
)
def test_tensorflow_collective_errors_mean_a_lost_peer(name):
    error = _tf_error(name)
    assert lost_peer(error) is error
    wrapped = RuntimeError("fit failed")
    wrapped.__cause__ = error
    assert lost_peer(wrapped) is error


@pytest.mark.parametrize(
    "error",
    [_tf_error("InternalError"), _tf_error("UnavailableError", "my_package.errors"), ValueError("bad data")],
)
def test_other_errors_are_no_lost_peer(error):
    assert lost_peer(error) is None


def test_gang_restart_is_a_lost_peer_also_inside_another_error():
    restart = GangRestart("device lost")
    outer = RuntimeError("wrapped")
    outer.original = restart  # type: ignore[attr-defined]
    assert lost_peer(outer) is restart


@pytest.mark.parametrize(
    ("step", "code", "line"),
    [
        (
            "steps_for_tests:lose_a_peer",
            EXIT_RETRY,
            "error: step steps_for_tests:lose_a_peer lost a peer of the gang: UnavailableError: Collective ops "
            "is aborted by: Task /job:worker/replica:0/task:1 heartbeat timeout.; the gang restarts from its "
            "last checkpoint\n",
        ),
        ("steps_for_tests:always_fail", EXIT_FAILED, None),
    ],
)
def test_the_entrypoint_exits_75_on_a_lost_peer_with_one_line(tmp_path, step, code, line):
    spec = tmp_path / "spec.json"
    spec.write_text("{}")
    result = tmp_path / "result.json"
    cmd = [sys.executable, "-m", "airflow_ml_provider.ml", step, "--spec", str(spec), "--result", str(result)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == code, done.stderr
    err = done.stderr
    if line is not None:
        assert err.endswith(line) and "Traceback" not in err
    else:
        assert "Traceback" in err and "lost a peer" not in err
    assert not result.exists()
