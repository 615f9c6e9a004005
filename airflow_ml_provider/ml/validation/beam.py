"""Statistics with an Apache Beam pipeline, for data beyond one machine (``engine: "beam"``)."""

from __future__ import annotations

import logging
import posixpath
from typing import Any

from airflow_ml_provider.ml.validation.io import DataFiles
from airflow_ml_provider.ml.validation.statistics import canonical_batch, stats_options

log = logging.getLogger(__name__)


def _locations(files: DataFiles) -> list[str]:
    """Full URIs of the data files (:param files:), as Beam's filesystems want them."""
    protocol = files.fs.protocol if isinstance(files.fs.protocol, str) else files.fs.protocol[0]
    return [p if protocol in ("file", "local") else f"{protocol}://{p}" for p in files.paths]


def _common_glob(locations: list[str], fmt: str) -> str:
    """
    A ``<dir>/*.<fmt>`` pattern covering the files of one directory.

    :param locations: the file URIs.
    :param fmt: the file extension.
    """
    parents = {posixpath.dirname(p) for p in locations}
    if len(parents) != 1:
        raise ValueError(
            f"validate_data: engine 'beam' wants the files in one directory, got {sorted(parents)}."
        )
    return posixpath.join(parents.pop(), f"*.{fmt}")


def _table_batches(table: Any) -> list[Any]:
    return [canonical_batch(batch) for batch in table.to_batches() if batch.num_rows]


def _parquet_statistics(locations: list[str], pipeline_args: list[str], output_path: str) -> Any:
    """
    Run ReadAllFromParquetBatched -> TFDV GenerateStatistics -> binary statistics file.

    :param locations: the parquet file URIs.
    :param pipeline_args: Beam pipeline arguments.
    :param output_path: where the pipeline writes the statistics.
    """
    import apache_beam as beam
    import tensorflow_data_validation as tfdv
    from apache_beam.options.pipeline_options import PipelineOptions

    with beam.Pipeline(options=PipelineOptions(list(pipeline_args))) as pipeline:
        _ = (
            pipeline
            | "Files" >> beam.Create(locations)
            | "Read" >> beam.io.ReadAllFromParquetBatched()
            | "Batches" >> beam.FlatMap(_table_batches)
            | "Statistics" >> tfdv.GenerateStatistics(stats_options())
            | "Write" >> tfdv.WriteStatisticsToBinaryFile(output_path)
        )
    return tfdv.load_stats_binary(output_path)


def compute_statistics_beam(files: DataFiles, pipeline_args: list[str], output_path: str) -> Any:
    """
    Compute statistics with a Beam pipeline on the runner the pipeline arguments choose.

    CSV goes through ``tfdv.generate_statistics_from_csv`` (all files of the version directory,
    sharing one header); parquet through ``ReadAllFromParquetBatched``.

    :param files: the data files.
    :param pipeline_args: Beam pipeline arguments, e.g. ``["--runner=FlinkRunner", ...]``.
    :param output_path: where the pipeline writes the binary statistics file.
    """
    import tensorflow_data_validation as tfdv
    from apache_beam.options.pipeline_options import PipelineOptions

    locations = _locations(files)
    log.info("Beam statistics of %s (%d file(s)), args %s", files.uri, len(locations), pipeline_args)
    if files.format == "parquet":
        return _parquet_statistics(locations, pipeline_args, output_path)
    pattern = locations[0] if len(locations) == 1 else _common_glob(locations, "csv")
    return tfdv.generate_statistics_from_csv(
        data_location=pattern,
        stats_options=stats_options(),
        output_path=output_path,
        pipeline_options=PipelineOptions(list(pipeline_args)),
    )
