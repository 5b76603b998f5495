"""The names of the tags and metrics our runs carry, named once: the report, the study, the registry and the UI's
searches read runs by them, and stored runs hold them (renaming one orphans those runs)."""

from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NOTE

ROLE = "role"  # teacher | baseline | mimic | kd; sweep and study for the parent runs
VARIANT = "variant"  # what sets a run apart within its role: `w=2048 k=32`
TEACHER_RUN_ID = "teacher_run_id"  # a student's teacher runs, joined by commas for an ensemble
STAGE = "study.stage"  # the stage of `make paper` a run belongs to
MODEL_ID = "model_id"  # the run's LoggedModel
REUSED_FROM = "reused_from"  # a run copying another's params and final metrics (tracking/reuse.py)
REUSE_KEY = "reuse_key"  # the identity of a job's result (tracking/reuse.py)
PARENT = MLFLOW_PARENT_RUN_ID  # nests a sweep's jobs under its parent run, a stage's sweep under the study
NOTE = MLFLOW_RUN_NOTE  # the run's Markdown description

SELECT_ON = "val/best_acc"  # the metric runs are chosen by: validation, never test
TEST_ACC = "test/acc"
