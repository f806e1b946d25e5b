"""DAG integrity: every DAG imports, has no cycles and follows the project's policies."""
from __future__ import annotations

import pytest

from include.common.config import PROJECT_ROOT


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(PROJECT_ROOT / "dags"))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}, dagbag.import_errors


def test_expected_dags_present(dagbag):
    assert "review_sentiment_pipeline" in dagbag.dag_ids


def test_every_task_has_retries_owner_and_tags(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, f"{dag_id} has no tags"
        assert dag.doc_md, f"{dag_id} has no doc_md"
        for t in dag.tasks:
            assert t.retries >= 1, f"{dag_id}.{t.task_id} has no retries"
            assert t.retry_exponential_backoff, f"{dag_id}.{t.task_id} has no exponential back-off"
            assert t.owner not in ("", "airflow"), f"{dag_id}.{t.task_id} has the default owner"


def test_no_cycles(dagbag):
    from airflow.utils.dag_cycle_tester import check_cycle

    for dag in dagbag.dags.values():
        check_cycle(dag)  # raises AirflowDagCycleException on a cycle


def test_main_dag_params_and_schedule(dagbag):
    dag = dagbag.dags["review_sentiment_pipeline"]
    expected = {"input_data_uri", "max_seq_length", "train_split_percentage", "validation_split_percentage",
                "balance_dataset", "epochs", "learning_rate", "train_batch_size", "max_train_samples",
                "min_accuracy", "model_name_or_path"}
    assert expected <= set(dag.params.keys())
    for name in expected:
        assert dag.params.get_param(name).description, f"param {name} has no description"
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert "daily" in dag.timetable.summary or dag.timetable.summary == "0 0 * * *"


def test_every_profile_setting_is_a_nullable_param_defaulting_to_the_profile(dagbag):
    """The trigger form shows each setting empty (= the profile's value); profile defaults to quality."""
    from include.pipeline.profiles import PROFILES, SETTINGS

    dag = dagbag.dags["review_sentiment_pipeline"]
    assert dag.params["profile"] == "quality"
    assert set(dag.params.get_param("profile").schema["enum"]) == set(PROFILES)
    for key in SETTINGS:
        param = dag.params.get_param(key)
        assert param.value is None, f"param {key} must default to empty (the profile's value)"
        assert "null" in param.schema["type"]
        for name, values in PROFILES.items():
            assert f"{name} {values[key]}" in param.description, f"{key}: description misses {name}'s value"
    # every value of both profiles passes the param schemas
    for values in PROFILES.values():
        for key, value in values.items():
            dag.params.get_param(key).resolve(value)


def test_main_dag_task_order(dagbag):
    dag = dagbag.dags["review_sentiment_pipeline"]
    chain = ["register_dataset", "validate_dataset", "preprocess", "train", "evaluate", "check_accuracy"]
    for upstream, downstream in zip(chain, chain[1:]):
        assert downstream in dag.get_task(upstream).downstream_task_ids, f"{upstream} -> {downstream} missing"


def test_every_task_has_a_timeout_and_records_its_failure(dagbag):
    from include.pipeline.alerts import on_task_failure

    for dag_id, dag in dagbag.dags.items():
        for t in dag.tasks:
            assert t.execution_timeout is not None, f"{dag_id}.{t.task_id} has no execution_timeout"
            callbacks = t.on_failure_callback if isinstance(t.on_failure_callback, list) else [t.on_failure_callback]
            assert on_task_failure in callbacks, f"{dag_id}.{t.task_id} does not record its failure"
