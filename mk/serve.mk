# Local model endpoint (include/serving/endpoint.py). Included by the top-level Makefile.
# The endpoint is a background uvicorn process; its pid/port/log live in $(REVIEWS_HOME)/endpoint
# (default .state/endpoint). Deploys happen from the pipeline's deploy_model task, or by hand with
#   $(PYTHON) -m include.serving.endpoint start --package-uri file:///.../model.tar.gz --version N
PYTHON ?= .venv/bin/python

.PHONY: stop endpoint-status endpoint-predict rollback

stop: ## Stop the model endpoint (local: in-flight requests finish first; REVIEWS_BACKEND=aws: delete the SageMaker endpoint)
	$(PYTHON) -m include.serving.endpoint stop

endpoint-status: ## Show what the local endpoint serves (version, port, pid, package)
	-@$(PYTHON) -m include.serving.endpoint status

endpoint-predict: ## Classify a review on the local endpoint: make endpoint-predict TEXT="Love this dress"
	@test -n "$(TEXT)" || { echo 'usage: make endpoint-predict TEXT="<review text>"'; exit 2; }
	$(PYTHON) -m include.serving.endpoint predict "$(TEXT)"

rollback: ## Serve the previous Approved model version again (registry + endpoint)
	@source tools/env.sh && $(PYTHON) -m include.pipeline.cli rollback
