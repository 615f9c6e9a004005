"""
The ``train_model`` step: build the strategy, call the user's ``run_fn(ctx)``, export and log the model.

Every worker of a gang runs this step with the same spec; ``TF_CONFIG`` (set by the local launcher,
or derived here from a Kubernetes Indexed Job's environment) tells each one its place. The chief
(worker 0) keeps the SavedModel and logs params, metrics and the model to the task's MLflow run;
the other workers export to a temporary directory (saving can involve collective ops, so every
worker takes part) that is deleted at once.

With checkpoints (the spec's ``checkpoint`` key, :mod:`~airflow_ml_provider.ml.training.checkpoint`)
every worker first restores the last complete checkpoint of the task instance, so that ``fit``
resumes where a killed gang or an earlier try stopped; the chief records the resume in the MLflow
run and, once the model is logged, marks the checkpoints finished.

Spec: :class:`~airflow_ml_provider.ml.specs.TrainModelSpec`, as a JSON dict.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from airflow_ml_provider.ml.scratch import make_scratch_dir
from airflow_ml_provider.ml.specs.training import STRATEGIES as STRATEGIES  # declared with the spec
from airflow_ml_provider.ml.specs.training import TrainModelSpec
from airflow_ml_provider.ml.training.cluster import (
    ENV_JOB_NAME,
    TF_CONFIG,
    WorkerRole,
    role_from_tf_config,
    tf_config_from_pod_env,
)
from airflow_ml_provider.vocabulary import ARTIFACT_TRAINING_RESULT

log = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"
RESULT_ARTIFACT = ARTIFACT_TRAINING_RESULT  # its earlier name, which operators/training.py imports
PYFUNC_FILE = str(Path(__file__).with_name("pyfunc_model.py"))


def _setup_tf_config() -> WorkerRole:
    """Derive TF_CONFIG in a pod of an Indexed Job (before TensorFlow is imported); return the role."""
    if not os.environ.get(TF_CONFIG) and os.environ.get(ENV_JOB_NAME):
        os.environ[TF_CONFIG] = json.dumps(tf_config_from_pod_env(os.environ))
    role = role_from_tf_config(os.environ.get(TF_CONFIG))
    if role.workers <= 1:
        # A one-worker "cluster" is a single process: TensorFlow must not wait for peers.
        os.environ.pop(TF_CONFIG, None)
    return role


def import_tensorflow() -> Any:
    """
    Import TensorFlow for training, with ``tf.keras`` = tf_keras, and return it.

    AutoGraph leaves Keras' own code alone (its rules skip the ``keras`` package) but not
    ``tf_keras``, the same Keras 2 code under another name: without this rule it rewrites all of
    Keras' training loop on the first ``fit`` (about 20 s of Python AST work here, for any model).
    Keras 2 runs unconverted, as it did when it was the ``keras`` package; a ``run_fn``'s own
    ``tf.function`` code is still converted.
    """
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # tf.keras = tf_keras, as TFMA and MWMS need
    import tensorflow as tf
    from tensorflow.python.autograph.core import config as autograph_config

    rules = autograph_config.CONVERSION_RULES
    if not any(isinstance(r, autograph_config.DoNotConvert) and r.matches("tf_keras") for r in rules):
        autograph_config.CONVERSION_RULES = (autograph_config.DoNotConvert("tf_keras"), *rules)
    return tf


def build_strategy(name: str, role: WorkerRole, *, checkpoints: bool = False) -> Any:
    """
    The ``tf.distribute.Strategy`` called ``name``, for a process in ``role``.

    With ``checkpoints``, ``one_device`` is TensorFlow's default strategy (one device, no
    distribution): tf_keras' ``BackupAndRestore`` refuses ``OneDeviceStrategy`` (NotImplementedError)
    but supports the default one, which places the model on the same device (the first GPU, else
    the CPU).
    """
    import tensorflow as tf

    if name != "multi_worker_mirrored" and role.workers > 1:
        raise ValueError(
            f"train_model: strategy {name!r} runs in one process, but the gang has {role.workers} "
            "workers; use strategy='multi_worker_mirrored' (or workers=1)."
        )
    if name == "one_device" and checkpoints:
        return tf.distribute.get_strategy()
    if name == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.MultiWorkerMirroredStrategy()


def _saved_model_in(path: Path) -> Path | None:
    """The SavedModel directory inside a downloaded MLflow model (or the path itself)."""
    for candidate in (path, path / "artifacts" / "saved_model", path / "data" / "model"):
        if (candidate / "saved_model.pb").is_file():
            return candidate
    found = sorted(path.rglob("saved_model.pb"))
    return found[0].parent if len(found) == 1 else None


def resolve_warm_start(uri: str, workdir: str, tracking_uri: str | None = None) -> str:
    """
    Download the warm-start model and return the local path of its SavedModel.

    :param uri: an MLflow model URI (``models:/...``, ``runs:/...``) or a local SavedModel directory.
    :param workdir: where to download it.
    :param tracking_uri: the tracking server (default: ``MLFLOW_TRACKING_URI``).
    """
    if "://" not in uri and not uri.startswith(("models:", "runs:")):
        local = Path(uri).expanduser()
    else:
        import mlflow.artifacts

        try:
            local = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=uri, dst_path=workdir, tracking_uri=tracking_uri
                )
            )
        except Exception as err:
            raise ValueError(
                f"Warm start: cannot fetch the model {uri!r} ({type(err).__name__}: {err}). Check the "
                "name and alias (models:/<name>@<alias>) or train without warm_start_from."
            ) from err
    saved_model = _saved_model_in(local) if local.is_dir() else None
    if saved_model is None:
        raise ValueError(
            f"Warm start: {uri!r} holds no TensorFlow SavedModel (no saved_model.pb); give a model this "
            "provider logged, or a SavedModel directory."
        )
    return str(saved_model)


def export_saved_model(model: Any, export_dir: str) -> None:
    """Write ``model`` (tf_keras Model, Keras 3 Model or tf.Module) as a SavedModel with ``serving_default``."""
    import tensorflow as tf
    import tf_keras

    if isinstance(model, tf_keras.Model):
        _save_tf_keras(model, export_dir)
    elif hasattr(model, "export") and type(model).__module__.startswith("keras"):
        model.export(export_dir)  # Keras 3: an inference SavedModel with a serving_default signature
    elif isinstance(model, tf.Module):
        tf.saved_model.save(model, export_dir)
    else:
        raise TypeError(
            f"run_fn returned a {type(model).__name__}; return a tf_keras / Keras model or a tf.Module "
            "(or None after writing a SavedModel to ctx.model_dir)."
        )


def _save_tf_keras(model: Any, export_dir: str) -> None:
    """
    Save a tf_keras model with a ``serving_default`` signature over its named inputs.

    Without traces of every layer's call (``save_traces=False``) when the model can be rebuilt from
    its config: saving traced layers under MultiWorkerMirroredStrategy took 30 s here, against
    under 1 s. Models with custom layers that have no ``get_config`` are saved with traces.
    """
    import tensorflow as tf

    from airflow_ml_provider.ml.training.signature import signature_input_names, write_input_names

    inputs = getattr(model, "inputs", None) or []
    if not inputs:
        model.save(export_dir, save_format="tf", include_optimizer=False)
        return
    names = [i.name for i in inputs]
    # Inputs TensorFlow cannot sign (``mean radius``) get a safe signature name, mapped back by the pyfunc.
    safe = signature_input_names(names)
    specs = {safe[i.name]: tf.TensorSpec(i.shape, i.dtype, name=safe[i.name]) for i in inputs}

    def serve(features: dict[str, Any]) -> Any:
        feed = {name: features[safe[name]] for name in names}
        outputs = model(feed if len(names) > 1 else feed[names[0]], training=False)
        return outputs if isinstance(outputs, dict) else {"output": outputs}

    signatures = {"serving_default": tf.function(serve).get_concrete_function(specs)}
    try:
        model.save(
            export_dir, save_format="tf", include_optimizer=False, save_traces=False, signatures=signatures
        )
    except NotImplementedError as err:  # a layer without get_config
        log.info("Saving with layer traces (%s)", err)
        shutil.rmtree(export_dir, ignore_errors=True)
        model.save(export_dir, save_format="tf", include_optimizer=False, signatures=signatures)
    write_input_names(export_dir, safe)


def _pip_requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for package in ("tensorflow", "mlflow", "pandas", "numpy"):
        try:
            pins.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            pins.append(package)
    return pins


def log_model(run_id: str, saved_model_dir: str, tracking_uri: str | None = None) -> str:
    """
    Log the SavedModel to the run as an MLflow pyfunc model; return its ``models:/<model_id>`` URI.

    The model is "from code" (``pyfunc_model.py`` is copied into it), so loading it needs TensorFlow
    and MLflow only, not this provider. Requirements are pinned to this environment's versions
    (no inference run in a subprocess).
    """
    import mlflow
    import mlflow.pyfunc
    from mlflow.models import Model

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    # The logged model belongs to the run's experiment (MLflow would use the default experiment).
    mlflow.set_experiment(experiment_id=mlflow.MlflowClient().get_run(run_id).info.experiment_id)
    # MLflow would copy the uv project of the working directory into the model, whatever it is.
    previous = os.environ.get("MLFLOW_LOG_UV_FILES")
    os.environ["MLFLOW_LOG_UV_FILES"] = "false"
    try:
        info = Model.log(
            artifact_path=None,
            name=MODEL_ARTIFACT,
            flavor=mlflow.pyfunc,
            run_id=run_id,
            python_model=PYFUNC_FILE,
            artifacts={"saved_model": saved_model_dir},
            pip_requirements=_pip_requirements(),
        )
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_LOG_UV_FILES", None)
        else:
            os.environ["MLFLOW_LOG_UV_FILES"] = previous
    return str(info.model_uri)


def _run_user_fn(ctx: Any, run_fn_ref: str) -> tuple[Any, float]:
    from airflow_ml_provider.ml.registry import resolve_step

    run_fn = resolve_step(run_fn_ref)
    started = time.monotonic()
    model = run_fn(ctx)
    return model, time.monotonic() - started


def train(spec: dict[str, Any]) -> dict[str, Any]:
    """
    Run the user's ``run_fn`` in this worker; the chief exports and logs the model.

    :param spec: a :class:`~airflow_ml_provider.ml.specs.TrainModelSpec` as a JSON dict.
    """
    settings = TrainModelSpec.parse(spec)
    role = _setup_tf_config()
    from airflow_ml_provider.ml.training.context import ChiefTracker, TrainingContext

    target = settings.mlflow
    tracker = ChiefTracker(target.run_id, enabled=role.is_chief, tracking_uri=target.tracking_uri)
    if tracker.enabled:
        tracker.connect()  # import MLflow now, not in the first epoch's callback while the gang waits
    workdir = make_scratch_dir("ml-train")
    try:
        tf = import_tensorflow()
        if settings.seed is not None:
            tf.keras.utils.set_random_seed(settings.seed)
        strategy = build_strategy(settings.strategy, role, checkpoints=settings.checkpoint is not None)
        warm = settings.warm_start_from
        warm_path = resolve_warm_start(warm, f"{workdir}/warm", target.tracking_uri) if warm else None
        model_dir = settings.model_dir if role.is_chief and settings.model_dir else f"{workdir}/model"
        checkpoints = _restore_checkpoints(settings, role, f"{workdir}/backup", tracker)
        ctx = TrainingContext.from_spec(
            settings,
            hyperparameters=dict(settings.hyperparameters),
            model_dir=str(model_dir),
            strategy=strategy,
            strategy_name=settings.strategy,
            role=role,
            warm_start_path=warm_path,
            mlflow_run_id=target.run_id,
            seed=settings.seed,
            tracker=tracker,
            checkpoints=checkpoints,
        )
        log.info(
            "Worker %d of %d (%s): strategy %s with %d replica(s) in sync, run_fn %s",
            role.index,
            role.workers,
            "chief" if role.is_chief else "worker",
            settings.strategy,
            strategy.num_replicas_in_sync,
            settings.run_fn,
        )
        model, seconds = _run_user_fn(ctx, settings.run_fn)
        result = _finish(settings, ctx, model, seconds, tracker)
        if checkpoints is not None:
            checkpoints.finish()  # after the model is logged: a retry before that resumes
        return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _restore_checkpoints(spec: TrainModelSpec, role: WorkerRole, backup_dir: str, tracker: Any) -> Any:
    """
    This worker's checkpoints, the last complete one restored into ``backup_dir``; None without.

    :param spec: the parsed spec (its ``checkpoint`` and ``mlflow`` keys).
    :param role: this worker's place in the gang (the chief uploads and records).
    :param backup_dir: the worker's local backup directory.
    :param tracker: the chief's MLflow tracker, where a resume is recorded.
    """
    if spec.checkpoint is None:
        return None
    from airflow_ml_provider.ml.training.checkpoint import TrainingCheckpoints, open_store, record_resume

    store = open_store(spec.checkpoint, spec.mlflow.run_id, spec.mlflow.tracking_uri)
    checkpoints = TrainingCheckpoints(store, backup_dir, every=spec.checkpoint.every, is_chief=role.is_chief)
    resumed = checkpoints.restore()
    if resumed is not None:
        count = record_resume(tracker, resumed)
        if count:
            log.info("Resume %d of MLflow run %s, at epoch %d", count, tracker.run_id, resumed["epoch"])
    return checkpoints


SAVED_MODEL_ENTRIES = {
    "saved_model.pb",
    "keras_metadata.pb",
    "fingerprint.pb",
    "variables",
    "assets",
    "assets.extra",  # input_names.json, when inputs were renamed for the signature
}


def _clear_model_dir(path: Path) -> None:
    """Make room for the export: an earlier try's SavedModel is replaced, anything else is refused."""
    if not path.exists() or not any(path.iterdir()):
        return
    entries = {p.name for p in path.iterdir()}
    if not entries <= SAVED_MODEL_ENTRIES or "saved_model.pb" not in entries:
        raise FileExistsError(
            f"train_model: model_dir {path} holds files other than a SavedModel ({', '.join(sorted(entries))}); "
            "give an empty or new directory so that nothing else is overwritten."
        )
    log.warning("model_dir %s holds an earlier SavedModel (an earlier try?); replacing it", path)
    shutil.rmtree(path)


def _epochs(model: Any, history: dict[str, list[Any]], resumed_from: dict[str, int] | None) -> int:
    """How many epochs the model was trained for, those before the checkpoint it resumed from too."""
    ran = list(getattr(getattr(model, "history", None), "epoch", None) or [])
    if ran:
        return int(max(ran)) + 1  # fit numbers a resumed run's epochs from the checkpoint's
    done = max((len(v) for v in history.values()), default=0)
    return max(done, resumed_from["epoch"]) if resumed_from else done


def _finish(spec: TrainModelSpec, ctx: Any, model: Any, seconds: float, tracker: Any) -> dict[str, Any]:
    """Export (every worker; only the chief's is kept), then log from the chief."""
    if model is not None:
        _clear_model_dir(Path(ctx.model_dir))
        export_saved_model(model, ctx.model_dir)
    elif not (Path(ctx.model_dir) / "saved_model.pb").is_file():
        raise ValueError(
            f"run_fn {spec.run_fn} returned None and wrote no SavedModel to ctx.model_dir "
            f"({ctx.model_dir}); return the model instead."
        )
    result: dict[str, Any] = {
        "role": "chief" if ctx.is_chief else "worker",
        "index": ctx.role.index,
        "workers": ctx.role.workers,
        "strategy": ctx.strategy_name,
        "replicas": int(ctx.strategy.num_replicas_in_sync),
        "train_seconds": round(seconds, 3),
        "resumed_from": ctx.resumed_from,
    }
    if not ctx.is_chief:
        return result
    history = getattr(getattr(model, "history", None), "history", None) or {}
    final = {k: float(v[-1]) for k, v in history.items() if v}
    result.update(
        {
            "saved_model_dir": ctx.model_dir if spec.model_dir else None,
            "final_metrics": final,
            "epochs": _epochs(model, history, ctx.resumed_from),
            "warm_started_from": spec.warm_start_from,
        }
    )
    if tracker.enabled:
        tracker.log_params(
            {
                "strategy": ctx.strategy_name,
                "workers": ctx.role.workers,
                "run_fn": spec.run_fn,
                "warm_start_from": spec.warm_start_from or "",
                **{f"hp.{k}": v for k, v in ctx.hyperparameters.items()},
            }
        )
        tracker.log_metrics({f"final_{k}": v for k, v in final.items()}, step=max(0, result["epochs"] - 1))
        tracker.log_metrics({"train_seconds": seconds})
        result["model_uri"] = log_model(tracker.run_id, ctx.model_dir, tracker.tracking_uri)
        tracker.client.log_text(
            tracker.run_id, json.dumps(result, indent=2, sort_keys=True), ARTIFACT_TRAINING_RESULT
        )
    return result
