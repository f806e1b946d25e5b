"""The trigger a deferred job task waits on: the provider's, plus stopping the job on a kill.

:class:`StoppingSageMakerTrigger` is the Amazon provider's ``SageMakerTrigger`` (the same
waiter, events and serialisation) with :meth:`on_kill`: Airflow 3.3's triggerer calls it when a
person marks the deferred task failed or success, or clears it - then the job it waits on is
stopped (``StopTrainingJob`` / ``StopProcessingJob``), so nobody pays for a job whose task is
gone. ``cleanup()`` is left alone on purpose: it also runs when the triggerer restarts or hands
the trigger to another triggerer, where the job must go on. A deferral that times out is not
a kill either: the task resumes (``__fail__``) and :class:`~include.pipeline.tasks.JobStepOperator`
stops the job there.

The triggerer imports this module by its path (``include.jobs.triggers``): ``include/`` is on
its ``PYTHONPATH`` as on the workers' (tools/env.sh, docker-compose.yaml).
"""
from __future__ import annotations

import logging

from airflow.providers.amazon.aws.triggers.sagemaker import SageMakerTrigger

log = logging.getLogger(__name__)
STOPPABLE = {"training": "stop_training_job", "processing": "stop_processing_job"}


class StoppingSageMakerTrigger(SageMakerTrigger):
    """``SageMakerTrigger`` that stops its job when the task is killed by a user action."""

    async def on_kill(self) -> None:
        kind = self.job_type.lower()
        method = STOPPABLE.get(kind)
        if method is None:
            return
        from botocore.exceptions import ClientError

        async with await self.hook().get_async_conn() as client:
            try:
                await getattr(client, method)(**{f"{kind.capitalize()}JobName": self.job_name})
                log.warning("task killed while deferred: stopped %s job %s", kind, self.job_name)
            except ClientError as exc:  # already terminal: nothing to stop
                log.info("%s job %s not stopped: %s", kind, self.job_name, exc)
