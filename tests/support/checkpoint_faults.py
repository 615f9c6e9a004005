"""A checkpoint store whose chief dies in the middle of an upload (for the checkpoint tests)."""

from __future__ import annotations

from pathlib import Path


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
