"""
Dataset statistics with TFDV, streamed chunk by chunk so memory stays flat as the data grows.

The in-memory path does what ``tfdv.generate_statistics_from_dataframe`` does internally (one
accumulator per TFDV generator, ``add_input`` per record batch), but reads the files with pyarrow in
bounded chunks and merges each chunk's accumulators into the running ones at once, so only one
chunk is held in memory.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from airflow_ml_provider.ml.specs.validation import DEFAULT_CHUNK_ROWS
from airflow_ml_provider.ml.validation.io import DataFiles

log = logging.getLogger(__name__)

# More than TFDV's default 10 equal-width buckets: the JSD drift comparator works on these
# histograms, and 20 halve the resample noise of long-tailed features (see schema.py).
HISTOGRAM_BUCKETS = 20
_MIN_BLOCK_BYTES = 1 << 12
_MAX_BLOCK_BYTES = 1 << 28
_CONVERSION_ERROR = re.compile(r"CSV column #(\d+).*conversion error to (\w+)", re.DOTALL)
# When a later CSV chunk does not fit the type inferred from the first one, widen the column:
# int -> float (e.g. "1.5"), anything else -> string (e.g. "n/a" in a numeric column).
_WIDER = {"int64": "float64", "null": "float64"}


class _Retype(Exception):
    """A CSV column must be re-read with a wider type (internal)."""

    def __init__(self, column: str, new_type: str) -> None:
        super().__init__(column)
        self.column = column
        self.new_type = new_type


def _normalise_column(array: Any) -> Any:
    """
    Cast one Arrow column to a type TFDV takes: ints, floats, strings/bytes, or lists of them.

    :param array: a pyarrow Array.
    """
    import pyarrow as pa

    kind = array.type
    if pa.types.is_dictionary(kind):
        return _normalise_column(array.dictionary_decode())
    if pa.types.is_boolean(kind) or pa.types.is_integer(kind):
        return array.cast(pa.int64())
    if pa.types.is_decimal(kind) or pa.types.is_float16(kind):
        return array.cast(pa.float64())
    if pa.types.is_null(kind):
        return array.cast(pa.float64())
    if pa.types.is_floating(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return array
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_list(kind):
        return array
    return array.cast(pa.string())  # timestamps, dates, times: described as text


def canonical_batch(batch: Any) -> Any:
    """Turn a flat RecordBatch (:param batch:) into the list-array batch TFDV generators expect."""
    import pyarrow as pa
    from tfx_bsl.arrow import table_util

    columns = [_normalise_column(column) for column in batch.columns]
    return table_util.CanonicalizeRecordBatch(pa.RecordBatch.from_arrays(columns, batch.schema.names))


def _csv_block_size(fs: Any, path: str, chunk_rows: int) -> int:
    """
    Bytes per CSV block so that a block holds about ``chunk_rows`` rows.

    :param fs: the fsspec filesystem.
    :param path: the CSV file.
    :param chunk_rows: rows wanted per chunk.
    """
    with fs.open(path, "rb") as handle:
        head = handle.read(1 << 16)
    lines = max(head.count(b"\n"), 1)
    per_row = max(len(head) // lines, 1)
    return int(min(max(per_row * chunk_rows, _MIN_BLOCK_BYTES), _MAX_BLOCK_BYTES))


def _csv_blocks(handle: Any, block_size: int) -> Iterator[bytes]:
    """
    Yield the data lines of an open CSV file in blocks of about ``block_size`` bytes, cut at newlines.

    pyarrow's own streaming reader reads ahead on its IO threads without a bound, so memory grows
    with the file; cutting blocks here keeps at most one block (plus one read ahead) in memory.
    Like pyarrow's default (``newlines_in_values=False``), quoted values must not contain newlines.

    :param handle: the file, positioned after the header line.
    :param block_size: bytes per block.
    """
    rest = b""
    while True:
        data = handle.read(block_size)
        if not data:
            if rest.strip():
                yield rest
            return
        buffer = rest + data
        cut = buffer.rfind(b"\n") + 1
        if cut == 0:
            rest = buffer
            continue
        rest = buffer[cut:]
        if buffer[:cut].strip():
            yield buffer[:cut]


def _parse_block(header: bytes, block: bytes, names: list[str], column_types: dict[str, Any]) -> Any:
    """
    Parse one block of CSV lines (with the header put in front) into one record batch.

    :param header: the header line.
    :param block: whole data lines.
    :param names: the column names (to name the column of a conversion error).
    :param column_types: column name -> pyarrow type, fixed from the first block on.
    """
    import pyarrow as pa
    from pyarrow import csv as pcsv

    convert_options = pcsv.ConvertOptions(
        null_values=[""], strings_can_be_null=True, column_types=column_types
    )
    try:
        table = pcsv.read_csv(pa.py_buffer(header + block), convert_options=convert_options)
    except pa.ArrowInvalid as err:
        match = _CONVERSION_ERROR.search(str(err))
        if not match or int(match.group(1)) >= len(names):
            raise
        raise _Retype(names[int(match.group(1))], _WIDER.get(match.group(2), "string")) from err
    return table.combine_chunks().to_batches()


def _csv_batches(fs: Any, path: str, chunk_rows: int, column_types: dict[str, Any]) -> Iterator[Any]:
    """
    Stream a CSV file as record batches; only empty fields are nulls (``"n/a"`` stays text).

    Column types are inferred from the first block and fixed for the later ones; a later block that
    does not convert raises ``_Retype`` so the caller re-reads the file with a wider type.

    :param fs: the fsspec filesystem.
    :param path: the CSV file.
    :param chunk_rows: rows wanted per chunk.
    :param column_types: column name -> pyarrow type forced after an earlier conversion error.
    """
    import pyarrow as pa
    from pyarrow import csv as pcsv

    block_size = _csv_block_size(fs, path, chunk_rows)
    with fs.open(path, "rb") as handle:
        header = handle.readline()
        if not header.endswith(b"\n"):
            header += b"\n"
        names = pcsv.read_csv(pa.py_buffer(header)).schema.names
        types = dict(column_types)
        for block in _csv_blocks(handle, block_size):
            batches = _parse_block(header, block, names, types)
            for batch in batches:
                for name, kind in zip(batch.schema.names, batch.schema.types, strict=True):
                    types.setdefault(name, kind)
                yield batch


class _Prefetcher:
    """A background thread that reads the next batch while the caller works on the current one."""

    def __init__(self, batches: Iterator[Any]) -> None:
        self.batches = batches
        self.slot: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=1)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._produce, name="validation-reader", daemon=True)

    def _put(self, item: tuple[str, Any]) -> bool:
        while not self.stop.is_set():
            try:
                self.slot.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            for batch in self.batches:
                if not self._put(("batch", batch)):
                    return
            self._put(("end", None))
        except BaseException as err:  # handed to the consumer, raised there
            self._put(("error", err))

    def __iter__(self) -> Iterator[Any]:
        self.thread.start()
        try:
            while True:
                kind, value = self.slot.get()
                if kind == "end":
                    return
                if kind == "error":
                    raise value
                yield value
        finally:
            self.stop.set()
            self.thread.join()


def _prefetch(batches: Iterator[Any]) -> Iterator[Any]:
    """
    Read ahead one batch in a background thread (pyarrow parses without the GIL).

    At most two batches are in memory: the one being described and the one read ahead.

    :param batches: the batch iterator (consumed in the background thread).
    """
    return iter(_Prefetcher(batches))


def _parquet_batches(fs: Any, path: str, chunk_rows: int) -> Iterator[Any]:
    """
    Stream a parquet file as record batches of at most ``chunk_rows`` rows.

    :param fs: the fsspec filesystem.
    :param path: the parquet file.
    :param chunk_rows: rows per batch.
    """
    from pyarrow import parquet as pq

    with fs.open(path, "rb") as handle:
        yield from pq.ParquetFile(handle).iter_batches(batch_size=chunk_rows)


# Shared by all accumulators of the process; threads are created on first use.
_POOL = ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2)), thread_name_prefix="tfdv-stats")


class _Accumulator:
    """Running TFDV accumulators, one per generator, merged chunk by chunk."""

    def __init__(self, options: Any, generators: list[Any] | None = None) -> None:
        from tensorflow_data_validation.statistics import stats_impl

        self.options = options
        self.generators = generators or stats_impl.get_generators(options, in_memory=True)
        self.partial: list[Any] | None = None
        self.rows = 0

    def fresh(self) -> _Accumulator:
        """An empty accumulator sharing this one's generators."""
        return _Accumulator(self.options, self.generators)

    def merge(self, other: _Accumulator) -> None:
        """Merge the partial statistics of :param other: into this one."""
        self.rows += other.rows
        self._merge_partial(other.partial)

    def _merge_partial(self, part: list[Any] | None) -> None:
        if part is None:
            return
        if self.partial is None:
            self.partial = part
        else:
            self.partial = [
                gen.merge_accumulators([so_far, new])
                for gen, so_far, new in zip(self.generators, self.partial, part, strict=True)
            ]

    def add(self, batch: Any) -> None:
        """Add one flat record batch (:param batch:)."""
        from tensorflow_data_validation.statistics import stats_impl

        if batch.num_rows == 0:
            return
        self.rows += batch.num_rows
        record_batch = canonical_batch(batch)
        if self.options.feature_allowlist or len(self.generators) < 2:
            part = stats_impl.generate_partial_statistics_in_memory(
                record_batch, self.options, self.generators
            )
        else:
            # TFDV's generators are independent and spend much of their time in Arrow and C++
            # code that releases the GIL: running them side by side uses the second core.
            futures = [
                _POOL.submit(gen.add_input, gen.create_accumulator(), record_batch) for gen in self.generators
            ]
            part = [future.result() for future in futures]
        self._merge_partial(part)

    def result(self) -> Any:
        """Return the merged DatasetFeatureStatisticsList."""
        from tensorflow_data_validation.statistics import stats_impl

        partial = self.partial
        if partial is None:
            partial = [gen.create_accumulator() for gen in self.generators]
        return stats_impl.extract_statistics_output(partial, self.generators)


def _read_error(path: str, fmt: str, err: Exception) -> ValueError:
    return ValueError(
        f"validate_data: cannot read {path!r} as {fmt}: {err}. Is the file corrupt (a CSV must be "
        "UTF-8), or is spec key 'format' wrong for it?"
    )


def _add_csv(acc: _Accumulator, fs: Any, path: str, chunk_rows: int) -> None:
    """
    Add one CSV file, re-reading it with a wider column type when a later chunk does not convert.

    :param acc: the running accumulators; the file's statistics are merged in once it is read.
    :param fs: the fsspec filesystem.
    :param path: the CSV file.
    :param chunk_rows: rows per chunk.
    """
    import pyarrow as pa

    column_types: dict[str, Any] = {}
    while True:
        file_acc = acc.fresh()
        try:
            for batch in _prefetch(_csv_batches(fs, path, chunk_rows, column_types)):
                file_acc.add(batch)
            acc.merge(file_acc)
            return
        except _Retype as retype:
            if column_types.get(retype.column) == pa.string():
                raise _read_error(path, "csv", retype) from retype
            log.warning(
                "%s: column %r does not convert to the type guessed from the first rows; "
                "re-reading the file with it as %s",
                path,
                retype.column,
                retype.new_type,
            )
            column_types[retype.column] = pa.type_for_alias(retype.new_type)


def stats_options() -> Any:
    """The TFDV StatsOptions used by both engines."""
    import tensorflow_data_validation as tfdv

    return tfdv.StatsOptions(num_histogram_buckets=HISTOGRAM_BUCKETS)


def compute_statistics(files: DataFiles, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Any:
    """
    Compute TFDV statistics of all files of a version in bounded memory.

    :param files: the data files (see ``find_data_files``).
    :param chunk_rows: rows per chunk.
    :return: a ``DatasetFeatureStatisticsList`` proto.
    """
    import pyarrow as pa

    acc = _Accumulator(stats_options())
    for path in files.paths:
        try:
            if files.format == "csv":
                _add_csv(acc, files.fs, path, chunk_rows)
            else:
                for batch in _prefetch(_parquet_batches(files.fs, path, chunk_rows)):
                    acc.add(batch)
        except (pa.ArrowException, OSError, UnicodeDecodeError) as err:  # CSV must be UTF-8
            raise _read_error(path, files.format, err) from err
    log.info("Statistics of %s: %d rows in %d file(s)", files.uri, acc.rows, len(files.paths))
    return acc.result()
