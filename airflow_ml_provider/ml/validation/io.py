"""File handling for the validation steps: find the data files, read and write protos atomically."""

from __future__ import annotations

import logging
import os
import posixpath
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FORMATS = ("csv", "parquet")


@dataclass(frozen=True)
class DataFiles:
    """The data files of one dataset version on one filesystem."""

    uri: str
    fs: Any
    paths: list[str]
    format: str


def url_to_fs(uri: str) -> tuple[Any, str]:
    """
    Return the fsspec filesystem and the path inside it for a local path or any fsspec URI.

    :param uri: a plain local path, a ``file://`` URI or any URI fsspec understands.
    """
    import fsspec

    fs, path = fsspec.core.url_to_fs(os.path.expanduser(uri) if "://" not in uri else uri)
    return fs, path


def _format_of(path: str) -> str | None:
    name = posixpath.basename(path).lower()
    for fmt in FORMATS:
        if name.endswith(f".{fmt}"):
            return fmt
    return None


def _list_dir(fs: Any, path: str, uri: str) -> list[str]:
    """
    List the visible ``*.csv`` / ``*.parquet`` files of a version directory, sorted.

    :param fs: the fsspec filesystem.
    :param path: the directory inside it.
    :param uri: the URI named in error messages.
    """
    names = sorted(str(p) for p in fs.ls(path, detail=False))
    files = [
        p
        for p in names
        if not posixpath.basename(p).startswith(("_", ".")) and _format_of(p) and fs.isfile(p)
    ]
    if not files:
        raise FileNotFoundError(
            f"validate_data: data_uri {uri!r} is a directory without any *.csv or *.parquet file "
            "(hidden files and _SUCCESS are ignored). Point data_uri at a dataset version directory."
        )
    return files


def _pick_format(paths: list[str], fmt: str | None, uri: str, single: bool) -> tuple[list[str], str]:
    """
    Decide the format of the files and keep the files of that format.

    :param paths: the candidate files.
    :param fmt: the format asked for, or None to detect it from the file extensions.
    :param uri: the URI named in error messages.
    :param single: ``uri`` names one file (read as ``fmt`` whatever its extension says).
    """
    if fmt is not None:
        if single:
            return paths, fmt  # a single file is read as asked, whatever its name says
        chosen = [p for p in paths if _format_of(p) == fmt]
        if not chosen:
            raise FileNotFoundError(f"validate_data: no *.{fmt} file in {uri!r} (format is {fmt!r}).")
        return chosen, fmt
    found = {_format_of(p) for p in paths}
    if None in found:
        raise ValueError(
            f"validate_data: cannot tell the format of {uri!r} from its extension; set spec key "
            f"'format' to one of {list(FORMATS)}."
        )
    if len(found) > 1:
        raise ValueError(
            f"validate_data: {uri!r} mixes csv and parquet files; keep one format per version or set "
            "spec key 'format' to read only one of them."
        )
    return paths, str(found.pop())


def find_data_files(uri: str, fmt: str | None) -> DataFiles:
    """
    Resolve ``data_uri`` to its data files and their format; empty files are an error.

    :param uri: a version directory or a single file (local path or fsspec URI).
    :param fmt: ``"csv"``, ``"parquet"`` or None to detect from the extensions.
    """
    fs, path = url_to_fs(uri)
    if fs.isdir(path):
        paths = _list_dir(fs, path, uri)
    elif fs.isfile(path):
        paths = [path]
    else:
        raise FileNotFoundError(
            f"validate_data: data_uri {uri!r} does not exist. Give a dataset version directory or a "
            "single .csv/.parquet file."
        )
    paths, fmt = _pick_format(paths, fmt, uri, single=not fs.isdir(path))
    for p in paths:
        if fs.size(p) == 0:
            raise ValueError(f"validate_data: data file {p!r} of {uri!r} is empty (0 bytes); rewrite it.")
    return DataFiles(uri=uri, fs=fs, paths=paths, format=fmt)


def no_rows_message(files: DataFiles) -> str:
    """
    The error for a version whose files hold no rows (a CSV header only), naming each file.

    :param files: the version's data files, every one of them without rows.
    """
    what = "a header but no rows" if files.format == "csv" else "no rows"
    names = ", ".join(repr(p) for p in files.paths)
    if len(files.paths) == 1 and files.paths[0] == url_to_fs(files.uri)[1]:
        where = f"data file {names}"
    else:
        where = f"data file{'s' * (len(files.paths) > 1)} {names} of {files.uri!r}"
    return (
        f"validate_data: {where} {'hold' if len(files.paths) > 1 else 'holds'} {what}; a dataset "
        "version must hold at least one row. Write the rows into the file (or point data_uri at a "
        "version that has them)."
    )


def read_bytes(uri: str, key: str) -> bytes:
    """
    Read a whole file, raising a FileNotFoundError that names the spec key when it is missing.

    :param uri: path or fsspec URI.
    :param key: the spec key the file came from.
    """
    fs, path = url_to_fs(uri)
    if not fs.isfile(path):
        raise FileNotFoundError(f"validate_data: spec key {key!r}: file {uri!r} does not exist.")
    with fs.open(path, "rb") as handle:
        return bytes(handle.read())


def exists(uri: str) -> bool:
    """Whether the file :param uri: exists."""
    fs, path = url_to_fs(uri)
    return bool(fs.isfile(path))


def write_atomic(uri: str, data: bytes) -> None:
    """
    Write a file so that readers see either the old or the whole new content (tmp + rename).

    :param uri: path or fsspec URI of the file.
    :param data: the content.
    """
    fs, path = url_to_fs(uri)
    parent = posixpath.dirname(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = posixpath.join(parent, f".{posixpath.basename(path)}.tmp-{uuid.uuid4().hex[:12]}")
    with fs.open(tmp, "wb") as handle:
        handle.write(data)
    try:
        protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
        if "file" in protocols:
            os.replace(tmp, path)
        else:
            fs.mv(tmp, path)
    except BaseException:
        fs.rm(tmp)
        raise


class StagedOutput:
    """A hidden temporary directory inside ``output_dir`` whose entries move into place on commit."""

    def __init__(self, output_dir: str) -> None:
        self.final = Path(os.path.abspath(os.path.expanduser(output_dir)))
        self.final.mkdir(parents=True, exist_ok=True)
        self.tmp = self.final / f".tmp-{uuid.uuid4().hex[:12]}"
        self.tmp.mkdir()

    def final_path(self, name: str) -> str:
        """Where the staged entry :param name: ends up."""
        return str(self.final / name)

    def commit(self, owned: tuple[str, ...] = ()) -> None:
        """
        Move every staged entry into ``output_dir``, replacing older ones.

        :param owned: entry names this step writes; older ones this run did not write are removed
            (so a run without plots does not leave an earlier run's plots behind).
        """
        for name in owned:
            stale = self.final / name
            if not (self.tmp / name).exists() and stale.exists():
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
        for entry in sorted(self.tmp.iterdir()):
            target = self.final / entry.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(entry, target)
        self.tmp.rmdir()

    def discard(self) -> None:
        """Remove the staging directory and everything in it."""
        shutil.rmtree(self.tmp, ignore_errors=True)
