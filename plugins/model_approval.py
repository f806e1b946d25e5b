"""Airflow plugin code: the human approval step, Airflow 3's HITL ApprovalOperator recorded in the
model registry. Plugins depend on include/, never the reverse."""
from __future__ import annotations

from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator


class ModelApprovalOperator(ApprovalOperator):
    """Waits for a person to Approve or Reject a registered model version in the Airflow UI
    (Required Actions) or through the REST API, then writes the decision to the registry:
    Approve marks the version ``Approved`` and lets ``deploy_model`` run; Reject marks it
    ``Rejected`` and the operator skips the deployment."""

    template_fields = (*ApprovalOperator.template_fields, "model_version")

    def __init__(self, *, model_version: str, subject: str = "Approve review-sentiment model?",
                 **kwargs: Any) -> None:
        super().__init__(subject=subject, **kwargs)
        self.model_version = model_version

    def execute(self, context: Any) -> Any:
        """Write the request (subject and body built from the registry and the evaluation
        report: candidate vs deployed, per class, data range, debugger warnings, report link),
        then wait. A ``body`` given to the operator is kept and added below."""
        from include.pipeline.review import approval_request

        subject, body = approval_request(str(self.model_version))
        self.subject, self.body = subject, body + (f"\n\n{self.body}" if self.body else "")
        self.log.info("approval request: %s\n%s", self.subject, self.body)
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        """Record the decision, then let the base class proceed (it raises to skip on Reject)."""
        from include.pipeline.model_steps import approve_model, reject_model

        if "error" not in event and event.get("chosen_options"):
            choice = event["chosen_options"][0]
            user = event.get("responded_by_user") or {}
            who = (user.get("name") or user.get("id")) if isinstance(user, dict) else str(user)
            note = f"{choice} by {who or 'unknown user'} in Airflow run {context['run_id']}"
            if choice == self.APPROVE:
                approve_model(str(self.model_version), note)
            elif choice == self.REJECT:
                reject_model(str(self.model_version), note)
            self.log.info("model version %s: %s", self.model_version, note)
        return super().execute_complete(context=context, event=event)
