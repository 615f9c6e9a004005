"""
Training checkpoints that outlive the gang: a worker killed mid-epoch, a restarted gang or a task
retry resumes from the last complete checkpoint instead of epoch 0.

Each worker writes its checkpoint locally (its own scratch directory), through tf_keras'
``BackupAndRestore`` (:meth:`TrainingCheckpoints.keras_callback`) or a ``run_fn``'s own loop
(:meth:`TrainingCheckpoints.commit`). After each save the chief uploads it to the **store** as one
complete unit: the files into the slot the last complete checkpoint is not in (two slots take
turns, so storage stays bounded), then ``latest.json``, the marker that names the slot, last. An
upload cut short leaves the marker on the previous checkpoint, which stays whole.

Before ``run_fn`` every worker downloads the checkpoint the marker names into its local directory,
where ``BackupAndRestore`` finds it (its ``chief/`` folder: all workers restore from it under
``MultiWorkerMirroredStrategy``). When training succeeded the chief marks the store finished, so
that a cleared and rerun task trains from scratch: an fsspec location is deleted, the MLflow run's
marker becomes ``{"finished": true}`` (its slots deleted where the artifact store can).

The store is a directory the workers share (a local path or an fsspec URI: ``s3://``, ``gs://``
...), or the task's MLflow run, under :data:`ARTIFACT_CHECKPOINTS`. No TensorFlow or MLflow import
at module level.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_ml_provider.vocabulary import (
    ARTIFACT_CHECKPOINTS,
    METRIC_RESUMED_FROM_EPOCH,
    TAG_RESUMED_FROM_EPOCH,
    TAG_RESUMES,
)

if TYPE_CHECKING:
    from airflow_ml_provider.ml.specs.training import CheckpointSettings

log = logging.getLogger(__name__)

MARKER = "latest.json"
SLOTS = ("slot-0", "slot-1")
MARKER_FORMAT = 1
#: the folder of ``BackupAndRestore``'s backup directory that every worker restores from
KERAS_CHIEF_DIR = "chief"


class CheckpointStore:
    """Where a task instance's checkpoints live: a marker and two slots of files."""

    #: for messages: where the checkpoints are
    location: str = ""

    def read_marker(self) -> dict[str, Any] | None:
        """The marker, or None when there is none."""
        raise NotImplementedError

    def write_marker(self, marker: dict[str, Any]) -> None:
        raise NotImplementedError

    def clear_slot(self, slot: str) -> None:
        """Remove what an earlier upload left in ``slot`` (where the store can)."""
        raise NotImplementedError

    def put_file(self, local: Path, slot: str, name: str) -> None:
        raise NotImplementedError

    def get_file(self, slot: str, name: str, local: Path) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """Mark the store finished: a later restore finds nothing to resume."""
        raise NotImplementedError


class FsspecStore(CheckpointStore):
    """
    Checkpoints in a directory shared by the workers: a local path or any fsspec URI.

    :param uri: the task instance's directory (the operator adds dag, run, task and map index).
    """

    def __init__(self, uri: str) -> None:
        from airflow_ml_provider.ml.validation.io import url_to_fs

        self.location = uri
        self.fs, self.root = url_to_fs(uri)
        self.local = "file" in _protocols(self.fs)

    def _path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def read_marker(self) -> dict[str, Any] | None:
        path = self._path(MARKER)
        if not self.fs.exists(path):
            return None
        return _parse_marker(self.fs.cat_file(path), self.location)

    def write_marker(self, marker: dict[str, Any]) -> None:
        data = json.dumps(marker, indent=1, sort_keys=True).encode()
        self.fs.makedirs(self.root, exist_ok=True)
        if not self.local:
            self.fs.pipe_file(self._path(MARKER), data)  # an object store replaces it whole
            return
        handle, tmp = tempfile.mkstemp(prefix=".latest-", dir=self.root)  # readers never see half of it
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(tmp, self._path(MARKER))

    def clear_slot(self, slot: str) -> None:
        path = self._path(slot)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def put_file(self, local: Path, slot: str, name: str) -> None:
        target = self._path(slot, name)
        self.fs.makedirs(posixpath.dirname(target), exist_ok=True)
        self.fs.put_file(str(local), target)

    def get_file(self, slot: str, name: str, local: Path) -> None:
        self.fs.get_file(self._path(slot, name), str(local))

    def finish(self) -> None:
        if self.fs.exists(self.root):
            self.fs.rm(self.root, recursive=True)


class MlflowRunStore(CheckpointStore):
    """
    Checkpoints in the task's MLflow run, under :data:`ARTIFACT_CHECKPOINTS` (the run's artifact
    store: the tracking server's proxy, S3 ...). The workers need the tracking server's credentials
    (``MLFLOW_TRACKING_*``), which the launchers give every worker.

    :param run_id: the task's run.
    :param tracking_uri: the tracking server (default: ``MLFLOW_TRACKING_URI``).
    """

    def __init__(self, run_id: str, tracking_uri: str | None = None) -> None:
        self.run_id = run_id
        self.tracking_uri = tracking_uri
        self.location = f"MLflow run {run_id} ({ARTIFACT_CHECKPOINTS}/)"
        self._repo: Any = None

    @property
    def repo(self) -> Any:
        if self._repo is None:
            from mlflow import MlflowClient
            from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

            client = MlflowClient(tracking_uri=self.tracking_uri)
            root = client.get_run(self.run_id).info.artifact_uri
            self._repo = get_artifact_repository(root, tracking_uri=client.tracking_uri)
        return self._repo

    @staticmethod
    def _path(*parts: str) -> str:
        return posixpath.join(ARTIFACT_CHECKPOINTS, *parts)

    def read_marker(self) -> dict[str, Any] | None:
        names = {entry.path for entry in self.repo.list_artifacts(ARTIFACT_CHECKPOINTS)}
        if self._path(MARKER) not in names:
            return None
        with tempfile.TemporaryDirectory(prefix="ml-ckpt-") as tmp:
            local = self.repo.download_artifacts(self._path(MARKER), tmp)
            return _parse_marker(Path(local).read_bytes(), self.location)

    def write_marker(self, marker: dict[str, Any]) -> None:
        with tempfile.TemporaryDirectory(prefix="ml-ckpt-") as tmp:
            local = Path(tmp, MARKER)
            local.write_text(json.dumps(marker, indent=1, sort_keys=True))
            self.repo.log_artifact(str(local), ARTIFACT_CHECKPOINTS)

    def clear_slot(self, slot: str) -> None:
        try:
            self.repo.delete_artifacts(self._path(slot))
        except Exception as err:  # not every artifact store deletes; an empty slot answers 404
            log.debug("Could not delete %s of MLflow run %s: %s", slot, self.run_id, err)

    def put_file(self, local: Path, slot: str, name: str) -> None:
        # The artifact keeps the local file's name, which is the last part of ``name``.
        folder = posixpath.dirname(name)
        self.repo.log_artifact(str(local), self._path(slot, folder) if folder else self._path(slot))

    def get_file(self, slot: str, name: str, local: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="ml-ckpt-", dir=local.parent) as tmp:
            os.replace(self.repo.download_artifacts(self._path(slot, name), tmp), local)

    def finish(self) -> None:
        self.write_marker({"format": MARKER_FORMAT, "finished": True, "time": _now()})
        for slot in SLOTS:
            self.clear_slot(slot)


def open_store(settings: CheckpointSettings, run_id: str | None, tracking_uri: str | None) -> CheckpointStore:
    """
    The store of a spec's ``checkpoint`` settings.

    :param settings: the parsed ``checkpoint`` key.
    :param run_id: the task's MLflow run (the store when ``settings.uri`` is null).
    :param tracking_uri: its tracking server.
    """
    if settings.uri:
        return FsspecStore(settings.uri)
    if not run_id:
        raise ValueError(
            "train_model: checkpoint.uri is null and the spec names no MLflow run to keep them in."
        )
    return MlflowRunStore(run_id, tracking_uri)


class TrainingCheckpoints:
    """
    One worker's side of the checkpoints: restore before ``run_fn``, upload (chief) after each save.

    :param store: where the checkpoints live.
    :param backup_dir: this worker's local backup directory (``BackupAndRestore``'s ``backup_dir``);
        the checkpoint itself is in its :data:`KERAS_CHIEF_DIR` folder, :attr:`checkpoint_dir`.
    :param every: ``"epoch"`` or every N training steps.
    :param is_chief: this worker uploads and finishes (the others only restore).
    """

    def __init__(self, store: CheckpointStore, backup_dir: str, *, every: str | int, is_chief: bool) -> None:
        self.store = store
        self.backup_dir = Path(backup_dir)
        self.checkpoint_dir = self.backup_dir / KERAS_CHIEF_DIR
        self.every = every
        self.is_chief = is_chief
        self.resumed_from: dict[str, int] | None = None
        self._slot: str | None = None  # the slot of the latest complete checkpoint

    def restore(self) -> dict[str, int] | None:
        """
        Download the latest complete checkpoint into :attr:`checkpoint_dir`; return where training
        resumes (``{"epoch", "step"}``), or None to start from scratch.
        """
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        marker = self.store.read_marker()
        if marker is None:
            log.info("No checkpoint in %s yet: training starts from scratch", self.store.location)
            return None
        if marker.get("finished"):
            log.info(
                "The checkpoints in %s belong to a training that finished: training starts from scratch",
                self.store.location,
            )
            return None
        slot, files = _marker_files(marker, self.store.location)
        for name in files:
            target = self.checkpoint_dir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                self.store.get_file(slot, name, target)
            except Exception as err:
                raise RuntimeError(
                    f"The last checkpoint in {self.store.location} ({MARKER} names {slot}/{name}) cannot be "
                    f"read: {type(err).__name__}: {err}. Check that every worker can read it, or delete "
                    f"{MARKER} there to train from scratch."
                ) from err
        self._slot = slot
        self.resumed_from = {"epoch": int(marker["epoch"]), "step": int(marker.get("step") or 0)}
        log.info(
            "Resuming from the checkpoint of %s: at epoch %d (after %d steps), saved %s",
            self.store.location,
            self.resumed_from["epoch"],
            self.resumed_from["step"],
            marker.get("time", "at an unknown time"),
        )
        return dict(self.resumed_from)

    def commit(self, *, epoch: int, step: int = 0, batch: int = 0) -> None:
        """
        Upload the checkpoint now in :attr:`checkpoint_dir` (chief only; a no-op elsewhere).

        :param epoch: the epoch a run resumed from this checkpoint starts at (0-based: after the
            end of epoch 2 it is 3).
        :param step: the training steps done so far (for the record).
        :param batch: the batch within ``epoch`` a resumed run starts at (checkpoints every N steps).
        """
        if not self.is_chief:
            return
        files = sorted(p.relative_to(self.checkpoint_dir).as_posix() for p in _files(self.checkpoint_dir))
        if not files:
            log.warning("No checkpoint files in %s to upload", self.checkpoint_dir)
            return
        slot = SLOTS[1] if self._slot == SLOTS[0] else SLOTS[0]
        started = time.monotonic()
        try:
            self.store.clear_slot(slot)
            for name in files:
                self.store.put_file(self.checkpoint_dir / name, slot, name)
        except Exception as err:  # training goes on: the previous checkpoint stays the resume point
            log.warning(
                "Could not upload the checkpoint of epoch %d to %s (%s: %s); a restart resumes from the "
                "previous one",
                epoch,
                self.store.location,
                type(err).__name__,
                err,
            )
            return
        marker = {
            "format": MARKER_FORMAT,
            "slot": slot,
            "files": files,
            "epoch": int(epoch),
            "batch": int(batch),
            "step": int(step),
            "time": _now(),
        }
        try:
            self.store.write_marker(marker)  # last: only now is this checkpoint the one to resume from
        except Exception as err:
            log.warning(
                "Could not write the checkpoint marker to %s (%s: %s)",
                self.store.location,
                type(err).__name__,
                err,
            )
            return
        self._slot = slot
        log.info(
            "Checkpoint saved to %s: resumes at epoch %d (after %d steps), %d files in %.1f s",
            self.store.location,
            epoch,
            step,
            len(files),
            time.monotonic() - started,
        )

    def finish(self) -> None:
        """Training succeeded: mark the store finished (chief only), so that a rerun starts afresh."""
        if not self.is_chief:
            return
        try:
            self.store.finish()
        except Exception as err:  # the model is logged: that must not fail the task now
            log.warning(
                "Could not mark the checkpoints in %s finished (%s: %s): a rerun of this task would resume "
                "from the last one; delete %s there to train from scratch",
                self.store.location,
                type(err).__name__,
                err,
                MARKER,
            )
            return
        log.info("Training finished: the checkpoints in %s will not be resumed", self.store.location)

    def keras_callback(self) -> Any:
        """A tf_keras ``BackupAndRestore`` that saves locally and then uploads (see the module)."""
        return _backup_callback(self)


def record_resume(tracker: Any, resumed: dict[str, int]) -> int:
    """
    Record a resume in the task's MLflow run (chief only): the tags and the metric of the module;
    return the resume's number (1 for the first), or 0 when nothing is tracked.

    :param tracker: the worker's :class:`~airflow_ml_provider.ml.training.context.ChiefTracker`.
    :param resumed: where training resumes (``{"epoch", "step"}``).
    """
    if not tracker.enabled:
        return 0
    tags = tracker.client.get_run(tracker.run_id).data.tags
    try:
        count = int(tags.get(TAG_RESUMES, "0")) + 1
    except ValueError:
        count = 1
    tracker.client.set_tag(tracker.run_id, TAG_RESUMES, str(count))
    tracker.client.set_tag(tracker.run_id, TAG_RESUMED_FROM_EPOCH, str(resumed["epoch"]))
    tracker.log_metrics({METRIC_RESUMED_FROM_EPOCH: float(resumed["epoch"])}, step=count)
    return count


def _backup_callback(checkpoints: TrainingCheckpoints) -> Any:
    import tf_keras

    class StoreBackupAndRestore(tf_keras.callbacks.BackupAndRestore):
        """``BackupAndRestore`` whose every save the chief uploads to the store."""

        def _backup(self, epoch: int, batch: int = 0) -> None:
            super()._backup(epoch=epoch, batch=batch)
            steps = (self.params or {}).get("steps")
            if self.save_freq == "epoch" or (steps and batch >= steps - 1):
                resume_epoch, resume_batch = epoch + 1, 0
            else:
                resume_epoch, resume_batch = epoch, batch + 1
            checkpoints.commit(epoch=resume_epoch, batch=resume_batch, step=self._steps_done())

        def _steps_done(self) -> int:
            try:
                return int(tf_keras.backend.get_value(self.model._train_counter))
            except Exception:  # a model without Keras' counter: the record only lacks it
                return 0

    return StoreBackupAndRestore(
        backup_dir=str(checkpoints.backup_dir), save_freq=checkpoints.every, delete_checkpoint=True
    )


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = getattr(fs, "protocol", ())
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _parse_marker(data: bytes, location: str) -> dict[str, Any]:
    try:
        marker = json.loads(data)
    except ValueError as err:
        raise ValueError(
            f"The checkpoint marker {MARKER} in {location} is not JSON ({err}); delete it to train "
            "from scratch."
        ) from None
    if not isinstance(marker, dict):
        raise ValueError(f"The checkpoint marker {MARKER} in {location} is not a JSON object; delete it.")
    return marker


def _marker_files(marker: dict[str, Any], location: str) -> tuple[str, list[str]]:
    """The slot and files a marker names, checked (no path leaves the checkpoint directory)."""
    slot, files, epoch = marker.get("slot"), marker.get("files"), marker.get("epoch")
    if (
        slot not in SLOTS
        or not isinstance(files, list)
        or not files
        or not isinstance(epoch, int)
        or not all(
            isinstance(f, str) and f and not f.startswith("/") and ".." not in f.split("/") for f in files
        )
    ):
        raise ValueError(
            f"The checkpoint marker {MARKER} in {location} is not one this provider wrote ({marker!r:.300}); "
            "delete it to train from scratch."
        )
    return str(slot), list(files)
