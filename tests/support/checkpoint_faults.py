"""For the checkpoint tests: a save as BackupAndRestore leaves it, and a store whose chief dies mid-upload."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def save(checkpoints: Any, content: str, epoch: int) -> None:
    """
    What BackupAndRestore leaves in the chief's folder after a save (max_to_keep=1), then the
    worker's commit of it (``checkpoints``: a
    :class:`~airflow_ml_provider.ml.training.checkpoint.TrainingCheckpoints`).
    """
    folder = checkpoints.checkpoint_dir
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    (folder / "checkpoint").write_text(f'model_checkpoint_path: "ckpt-{epoch}"\n')
    (folder / f"ckpt-{epoch}.index").write_text(content)
    (folder / f"ckpt-{epoch}.data-00000-of-00001").write_text(content * 3)
    checkpoints.commit(epoch=epoch, step=epoch * 10)


class CutShort:
    """
    Mixed in before a :class:`~airflow_ml_provider.ml.training.checkpoint.CheckpointStore`: dies
    (``KeyboardInterrupt``, as a killed process would stop) after uploading ``files_before_death``
    files; None uploads everything.
    """

    files_before_death: int | None = None

    def put_file(self, local: Path, slot: str, name: str) -> None:
        if self.files_before_death == 0:
            raise KeyboardInterrupt("killed mid-upload")
        super().put_file(local, slot, name)  # type: ignore[misc]
        if self.files_before_death is not None:
            self.files_before_death -= 1
