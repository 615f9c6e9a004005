"""
The names one part of the provider writes and another reads: MLflow tags, artifact paths, XCom
keys, Optuna trial attributes, asset-state keys.

A name that is written in one module and read in another (a step writes ``airflow_ml.blessed``,
the lineage view reads it; the cache writes ``cache/result.json``, a later task downloads it) lives
here once, and both sides import it. These names are also what the records in MLflow, the
metadata database and the study database are found by, so changing a value breaks the records
already written: add a name, never rename one.

This module imports nothing: every layer may import it, ``ml/`` (the bottom layer) included.
``tests/unit/test_vocabulary.py`` checks that the values are unique and that no other module
spells one of them out.
"""

from __future__ import annotations

# -- MLflow tags on a task instance's run (and on the DAG run's parent run) --------------------
# Written by tracking.py on every run it opens; found again by them on retry, and read by the
# lineage view (plugins/lineage_data.py).
TAG_DAG_ID = "airflow.dag_id"
TAG_RUN_ID = "airflow.run_id"
TAG_TASK_ID = "airflow.task_id"
TAG_MAP_INDEX = "airflow.map_index"
TAG_TRY_NUMBER = "airflow.try_number"
TAG_ROLE = "airflow.role"  # one of the ROLE_* values below
TAG_TI_KEY = "airflow.ti_key"
TAG_DAG_RUN_KEY = "airflow.dag_run_key"
TAG_TASK_STATE = "airflow.state"  # "skipped" on a task that skipped itself
METRIC_TASK_DURATION = "airflow.task_duration_seconds"

# Values of TAG_ROLE.
ROLE_DAG_RUN = "dag_run"  # the DAG run's parent run
ROLE_TASK = "task"  # a task instance's run
ROLE_TRIAL = "trial"  # an Optuna trial's child run

# The step a task ran (the lineage view places a run in its stage by it), and where it ran.
TAG_STEP = "airflow_ml.step"
TAG_PLACEMENT = "airflow_ml.placement"

# Values of TAG_STEP (the built-in steps' names in ml/registry.py, and "promote").
STEP_VALIDATE_DATA = "validate_data"
STEP_TUNE = "tune"
STEP_TRAIN_MODEL = "train_model"
STEP_EVALUATE_MODEL = "evaluate_model"
STEP_INFRA_VALIDATE = "infra_validate"
STEP_PROMOTE = "promote"

# On a training task's run when it resumed from a checkpoint (ml/training/checkpoint.py): the
# epoch the latest resume started at, how many resumes there were, and each resume's epoch as a
# metric (step = the resume's number).
TAG_RESUMED_FROM_EPOCH = "airflow_ml.training.resumed_from_epoch"
TAG_RESUMES = "airflow_ml.training.resumes"
METRIC_RESUMED_FROM_EPOCH = "resumed_from_epoch"

# The step cache (cache.py writes the key, operators/_cache.py a hit's tags, the lineage view
# reads a hit's source).
TAG_CACHE_KEY = "airflow_ml.cache_key"
TAG_CACHE_HIT = "airflow_ml.cache_hit"  # "true" / "false"
TAG_CACHE_SOURCE_RUN_ID = "airflow_ml.cache_source_run_id"
TAG_CACHE_SOURCE_URL = "airflow_ml.cache_source_url"
TAG_CACHE_KEY_REUSED = f"{TAG_CACHE_KEY}_reused"

# Verdicts the evaluation and infra validation steps return for their run ("true" / "false").
TAG_BLESSED = "airflow_ml.blessed"
TAG_INFRA_BLESSED = "airflow_ml.infra_blessed"
# Which data an evaluation's numbers come from (operators/evaluation.py): the datasets it evaluated
# ("data", "holdout" or "data,holdout"), and for each, TAG_EVALUATION_DATASET_PREFIX + "<dataset>."
# + "uri" / "version" / "blessed". The holdout's metrics are named "holdout/auc" ...
TAG_EVALUATED_ON = "airflow_ml.evaluated_on"
TAG_EVALUATION_DATASET_PREFIX = "airflow_ml.evaluation."

# Training.
TAG_LAUNCHER = "airflow_ml.launcher"

# Tuning: the tuning task's run (and, TAG_STUDY, each trial's run too).
TAG_TUNING_ROLE = "airflow_ml.tuning_role"  # one of the TUNING_ROLE_* values below
TAG_STUDY = "airflow_ml.study"
TAG_BEST_TRIAL = "airflow_ml.best_trial"
TAG_BEST_TRIAL_RUN_ID = "airflow_ml.best_trial_run_id"

# Values of TAG_TUNING_ROLE.
TUNING_ROLE_STUDY = "study"  # one task runs the whole study
TUNING_ROLE_WORKER = "worker"  # a mapped worker slot (the lineage view skips it)
TUNING_ROLE_SUMMARY = "summary"  # the task that summarises the workers' study

# Promotion: the promotion task's run (TAG_PROMOTION_REFUSED also on the refused model version).
TAG_PROMOTION = "airflow_ml.promotion"  # one of the PROMOTION_* values below
TAG_MODEL_VERSION = "airflow_ml.model_version"
TAG_PROMOTION_REFUSED = "airflow_ml.promotion_refused"

# Values of TAG_PROMOTION.
PROMOTION_PROMOTED = "promoted"
PROMOTION_REFUSED = "refused"
PROMOTION_ALREADY_CHAMPION = "already_champion"

# The champion guard: its task's run (operators/guard.py). The outcome is one of the statuses of
# hooks/live_metric.py (rolled_back, healthy, moved, superseded, no_data); the rollback itself is
# in the alias history.
TAG_GUARD_OUTCOME = "airflow_ml.guard.outcome"
TAG_GUARD_VERSION = "airflow_ml.guard.version"
TAG_GUARD_REASON = "airflow_ml.guard.reason"
TAG_GUARD_ROLLED_BACK_TO = "airflow_ml.guard.rolled_back_to"

# The DAG run's parent run: the dataset versions that started it (versions.py writes
# ``dataset.<asset>.<field>``, or ``dataset.<field>`` for a version named in dag_run.conf) and
# model freshness (freshness.py).
TAG_DATASET_PREFIX = "dataset."
TAG_FRESHNESS_DECISION = "freshness.decision"
METRIC_FRESHNESS = "freshness.version_to_{stage}_seconds"  # .format(stage=...)
FRESHNESS_STAGES = ("run_started", "trained", "promoted", "decided")

# MLflow's own tags that the provider sets or searches by.
TAG_PARENT_RUN = "mlflow.parentRunId"
TAG_NOTE = "mlflow.note.content"

# -- MLflow tags on an Optuna trial's child run (ml/tuning/trial_runs.py) ----------------------
# Also TAG_PARENT_RUN (the tuning task's run), TAG_ROLE = ROLE_TRIAL and TAG_STUDY.
TAG_TRIAL_NUMBER = "airflow_ml.trial_number"
TAG_TRIAL_STATE = "airflow_ml.trial_state"  # RUNNING, COMPLETE, PRUNED, FAIL
TAG_TRIAL_RETRY_OF = "airflow_ml.retry_of_trial"
TAG_TRIAL_ERROR = "airflow_ml.error"
TAG_TRIAL_WORKER = "airflow_ml.worker"

# -- MLflow tags on registered models and model versions (operators/promotion.py, hooks/_registry.py)
# Read back by a retried promotion, by the evaluation (its baseline's lineage) and by rollbacks.
TAG_ALIAS_EPOCH_PREFIX = "airflow_ml.alias_epoch."  # + alias, on the registered model
TAG_REGISTRATION_KEY = "airflow_ml.registration_key"
TAG_CANDIDATE_MODEL_URI = "airflow_ml.candidate_model_uri"
TAG_VERSION_DAG_ID = "airflow_ml.dag_id"
TAG_VERSION_DAG_RUN = "airflow_ml.dag_run"
TAG_VERSION_DATASET_VERSION = "airflow_ml.dataset_version"
TAG_EVALUATED_AGAINST = "airflow_ml.evaluated_against"
TAG_VERSION_RUN_PREFIX = "airflow_ml.run."  # + stage: the MLflow run(s) of that stage
TAG_VERSION_METRIC_PREFIX = "airflow_ml.metric."  # + metric name: a key metric
TAG_PROMOTED_AT = "airflow_ml.promoted_at"
TAG_PROMOTED_TO = "airflow_ml.promoted_to"
TAG_REPLACED_VERSION = "airflow_ml.replaced_version"
TAG_ROLLED_BACK_AT = "airflow_ml.rolled_back_at"
TAG_APPROVED_BY = "airflow_ml.approved_by"  # the person who approved the promotion (ApprovalOperator)
TAG_APPROVED_AT = "airflow_ml.approved_at"

# Baselines that travel with a model version (operators/_baselines.py). On the version, set by the
# promotion: the statistics and schema of the data it was trained on (copies in the promotion run,
# so they outlive the validation run that computed them), which data, and that run.
TAG_BASELINE_STATISTICS_URI = "airflow_ml.baseline.statistics_uri"
TAG_BASELINE_SCHEMA_URI = "airflow_ml.baseline.schema_uri"
TAG_BASELINE_DATA_URI = "airflow_ml.baseline.data_uri"
TAG_BASELINE_SOURCE_RUN = "airflow_ml.baseline.source_run"
# On a validation task's run that checked against a version's baseline (baseline="champion").
TAG_BASELINE_MODEL_NAME = "airflow_ml.baseline.model_name"
TAG_BASELINE_ALIAS = "airflow_ml.baseline.alias"
TAG_BASELINE_VERSION = "airflow_ml.baseline.version"  # "none": no champion, or one without a baseline
# On a validation task's run: the data it validated and its role ("training" or "serving", see
# ml/specs/validation.py), by which the promotion finds the validation of the training data.
TAG_DATA_URI = "airflow_ml.data_uri"
TAG_DATA_ROLE = "airflow_ml.data_role"

# Model aliases the promotion moves and the ModelAliasSensor watches by default.
ALIAS_CHAMPION = "champion"
ALIAS_PREVIOUS_CHAMPION = "previous_champion"

# -- MLflow experiments that hold a claim (hooks/mlflow.py: MlflowHook.claim) ------------------
EXPERIMENT_CLAIMS_PREFIX = ".airflow-ml-provider/claims/"
TAG_CLAIM_VALUE = "airflow_ml.claim.value"
TAG_CLAIM_KEY = "airflow_ml.claim.key"
# On the claims of an alias's epochs (hooks/_alias_history.py): the alias history. Each move's
# record rides on its epoch's claim (created with it, never changed); a second claim per epoch
# says what came of it.
TAG_HISTORY_KEY = "airflow_ml.history.key"  # a hash of "<model>/<alias>": what the search filters on
TAG_HISTORY_EPOCH = "airflow_ml.history.epoch"
TAG_HISTORY_ENTRY = "airflow_ml.history.entry"  # JSON: from, to, at, kind, reason, DAG run ...
TAG_HISTORY_OUTCOME = "airflow_ml.history.outcome"  # one of the HISTORY_OUTCOME_* values

# Values of TAG_HISTORY_OUTCOME, and the kinds of move the history records.
HISTORY_OUTCOME_DONE = "done"
HISTORY_OUTCOME_RELEASED = "released"  # the epoch was claimed, then the alias was found moved by hand
MOVE_PROMOTION = "promotion"
MOVE_ROLLBACK = "rollback"
MOVE_MANUAL = "manual"  # moved outside the provider; recorded when first seen

# -- Artifact paths in a task's MLflow run --------------------------------------------------------
# Each step's operator logs the step's output folder under its root; the extra links, the lineage
# view (which serves files under these roots only) and the step cache (which checks that a
# source run still holds them) read them back.
ARTIFACT_STEP_DIR = "step"  # any step: the spec it was given and, run elsewhere, its result
ARTIFACT_STEP_SPEC = f"{ARTIFACT_STEP_DIR}/spec.json"
ARTIFACT_STEP_RESULT = f"{ARTIFACT_STEP_DIR}/result.json"  # written by ``python -m airflow_ml_provider.ml``
ARTIFACT_VALIDATION_DIR = "validation"
ARTIFACT_VALIDATION_REPORT = f"{ARTIFACT_VALIDATION_DIR}/report.html"
ARTIFACT_VALIDATION_ANOMALIES = f"{ARTIFACT_VALIDATION_DIR}/anomalies.json"
ARTIFACT_VALIDATION_STATISTICS = f"{ARTIFACT_VALIDATION_DIR}/statistics.pb"
ARTIFACT_VALIDATION_SCHEMA = f"{ARTIFACT_VALIDATION_DIR}/schema.pbtxt"
# A promotion run: the baseline of the version it promoted (copied from the validation run).
ARTIFACT_BASELINE_STATISTICS = "baseline/statistics.pb"
ARTIFACT_BASELINE_SCHEMA = "baseline/schema.pbtxt"
ARTIFACT_TUNING_DIR = "tuning"
ARTIFACT_TUNING_SUMMARY = f"{ARTIFACT_TUNING_DIR}/summary.json"
ARTIFACT_TUNING_SPEC = f"{ARTIFACT_TUNING_DIR}/spec.json"
ARTIFACT_TRAINING_DIR = "training"
ARTIFACT_TRAINING_SPEC = f"{ARTIFACT_TRAINING_DIR}/spec.json"
ARTIFACT_TRAINING_RESULT = f"{ARTIFACT_TRAINING_DIR}/result.json"  # the train step's result
# A training task's checkpoints when it names no checkpoint_uri (ml/training/checkpoint.py).
ARTIFACT_CHECKPOINTS = "checkpoints"
ARTIFACT_EVALUATION_DIR = "evaluation"
ARTIFACT_EVALUATION_REPORT = f"{ARTIFACT_EVALUATION_DIR}/report.html"
ARTIFACT_EVALUATION_RECORD = f"{ARTIFACT_EVALUATION_DIR}/record.json"
ARTIFACT_EVALUATION_METRICS = f"{ARTIFACT_EVALUATION_DIR}/metrics.json"
ARTIFACT_EVALUATION_THRESHOLDS = f"{ARTIFACT_EVALUATION_DIR}/thresholds.json"
ARTIFACT_INFRA_VALIDATION_DIR = "infra_validation"
ARTIFACT_CACHE_DIR = "cache"
ARTIFACT_CACHE_RESULT = f"{ARTIFACT_CACHE_DIR}/result.json"  # a step's XCom value, for a cache hit

# -- XCom keys ----------------------------------------------------------------------------------
# Pushed by tracking.py for every tracked task; read by the extra links (links/mlflow.py) and
# the lineage view (plugins/lineage_app.py finds a DAG run's experiments by XCOM_EXPERIMENT_ID).
XCOM_RUN_ID = "mlflow_run_id"
XCOM_RUN_URL = "mlflow_run_url"
XCOM_EXPERIMENT_ID = "mlflow_experiment_id"
XCOM_CACHE_SOURCE_URL = "mlflow_cache_source_url"  # "" unless a cache hit reused another run
XCOM_TUNING_SUMMARY = "tuning_summary"
# Sensors: what a sensor delivered, read back by its next DAG run.
XCOM_DATASET_VERSION_DELIVERED = "dataset_version_delivered"
XCOM_MODEL_ALIAS_VERSION_PREFIX = "model_alias_version."  # + "<model>@<alias>"

# -- Optuna trial attributes, in the study's database (ml/tuning/) --------------------------------
# Written by one worker, read by the other workers and by the summary step.
TRIAL_ATTR_RUN_ID = "mlflow_run_id"  # system attribute: the trial's MLflow child run
TRIAL_ATTR_RETRY_OF = "failed_trial"  # Optuna's own (RetryFailedTrialCallback)
TRIAL_ATTR_RETRY_HISTORY = "retry_history"  # Optuna's own
TRIAL_ATTR_OWNER = "airflow_ml.owner"  # the task instance whose worker runs the trial
TRIAL_ATTR_TRY = "airflow_ml.try_number"
TRIAL_ATTR_WORKER = "airflow_ml.worker"
TRIAL_ATTR_ERROR = "error"  # user attribute
TRIAL_ATTR_STEPS = "reported_steps"  # user attribute

# -- Asset state-store keys (Airflow's per-asset key-value store) ---------------------------------
# The watcher's watermark (triggers/dataset.py) + a digest of the source; with the suffix, the
# versions the dataset-versions listener recorded (plugins/dataset_versions.py). The sensor's
# watermark (sensors/dataset.py), per task.
STATE_WATCHER_PREFIX = "airflow_ml.dataset_version."
STATE_DELIVERED_SUFFIX = ".delivered"
STATE_SENSOR_KEY = "airflow_ml.sensor.{dag_id}.{task_id}"  # .format(dag_id=..., task_id=...)
