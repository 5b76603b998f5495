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
STOP_REASON = "stop_reason"  # early_stopping | max_epochs: why a job's training ended
GIT_COMMIT = "git_commit"  # the checkout's commit a run ran from ('-dirty' with changes)
STUDY_SIZE = "study.size"  # the size of a study run (conf/study/<size>.yaml): smoke | full
FAILED_STAGES = "study.failed_stages"  # a study's stages in which a job failed, joined by commas

SELECT_ON = "val/best_acc"  # the metric runs are chosen by: validation, never test
TEST_ACC = "test/acc"
TEST_AGREEMENT = "test/agreement"  # the share of test inputs on which a student's argmax is its teacher's
BEST_EPOCH = "val/best_epoch"  # the epoch (from 0) of the checkpoint chosen on SELECT_ON
EPOCHS = "train/epochs"  # epochs trained
FIT_SECONDS = "time/fit_s"  # wall time of training
TRAIN_ACC, VAL_ACC, VAL_LOGIT_MSE = "train/acc", "val/acc", "val/logit_mse"  # histories, one point per epoch
TEACHER_TEST_ACC, TEACHER_VAL_ACC = "teacher/test_acc", "teacher/val_acc"  # a student's teacher, as it measured it
