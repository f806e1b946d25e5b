# The production topology natively (include/pipeline/stack.py): Postgres metadata DB, CeleryExecutor
# with Redis, two Celery workers (worker-2 also serves the `training` queue), scheduler, dag-processor,
# triggerer and api-server on loopback. Pids, logs and AIRFLOW_HOME under $(REVIEWS_HOME)/stack
# (default .state/stack). docker-compose.yaml runs the same services in containers.
.PHONY: stack stack-stop stack-status

stack: install land ## Start the stack (machine's Postgres/Redis if they answer, else embedded ones) and wait until healthy
	@$(ENV) $(BIN)/python -m include.pipeline.stack start

stack-stop: ## Stop every process of the stack (and the endpoint its runs deployed)
	@$(ENV) $(BIN)/python -m include.pipeline.stack stop

stack-status: ## Each service of the stack: pid and health
	@$(ENV) $(BIN)/python -m include.pipeline.stack status
