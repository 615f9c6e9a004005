"""Dataset versions on disk or in fsspec's memory store, and a storage that fails on demand."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fsspec.implementations.memory import MemoryFileSystem


def land(
    root: Path, version: str, *, marker: bool = True, rows: int = 3, pattern: str = "version={}"
) -> Path:
    """Write a version folder the way producers do: data first, completion marker last."""
    folder = root / pattern.format(version)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "part-00000.csv").write_text("a,b\n" + "".join(f"{i},{i * 2}\n" for i in range(rows)))
    if marker:
        (folder / "_SUCCESS").touch()
    return folder


def complete(folder: Path) -> None:
    (folder / "_SUCCESS").touch()
    os.utime(folder)


class FlakyMemoryFileSystem(MemoryFileSystem):
    """
    fsspec's memory store (protocol ``flaky://``) that raises ``FlakyMemoryFileSystem.error`` while set.

    Stands in for cloud storage that is unreachable or refuses access (there is none here).
    """

    protocol = ("flaky",)
    error: BaseException | None = None
    calls = 0

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        text = str(path)
        return super()._strip_protocol("/" + text.split("://", 1)[1] if "://" in text else text)

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> Any:
        type(self).calls += 1
        if type(self).error is not None:
            raise type(self).error
        return super().ls(self._strip_protocol(path), detail=detail, **kwargs)

    def info(self, path: str, **kwargs: Any) -> Any:
        if type(self).error is not None:
            raise type(self).error
        return super().info(self._strip_protocol(path), **kwargs)


def register_flaky() -> type[FlakyMemoryFileSystem]:
    import fsspec

    fsspec.register_implementation("flaky", FlakyMemoryFileSystem, clobber=True)
    FlakyMemoryFileSystem.error = None
    FlakyMemoryFileSystem.calls = 0
    return FlakyMemoryFileSystem


class DictStateStore:
    """The two calls the trigger makes on Airflow's asset state store, kept in a dict."""

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        self.data: dict[str, Any] = data if data is not None else {}

    async def aget(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    async def aset(self, key: str, value: Any) -> None:
        self.data[key] = value
