# The two commands: `make run` (the pipeline end to end on the local backend) and
# `make test` (the whole suite). Both set everything up themselves.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha1sum requirements.lock | cut -c1-12)
ENV := source tools/env.sh &&
# pip finds the CPU build of torch==2.13.0 in a local wheel folder when the machine has one.
PIP_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)

.PHONY: help install run test test-fast lint readme docs docs-serve ui land artifacts data-status lock clean chromium

include mk/serve.mk
include mk/features.mk
include mk/stack.mk
include mk/aws.mk
help:
	@echo "make run [PROFILE=quick|quality] [DS=YYYY-MM-DD] [CONF=json] - install, land the real data, run"
	@echo "                  review_sentiment_pipeline end to end (quick: < 10 min; quality: best accuracy, ~30 min)"
	@echo "make test       - install, lint (ruff) and run the whole test suite (what CI runs)"
	@echo "make test-fast  - the inner loop: the suite without the slow tier (DAG runs, stack, browser)"
	@echo "make lint       - ruff check (config in pyproject.toml)"
	@echo "make readme     - regenerate the profile/param tables of docs/profiles-and-params.md from the code"
	@echo "make docs       - build the docs site (mkdocs build --strict) into site/; make docs-serve: live reload on :8000"
	@echo "make ui         - start Airflow (api-server, scheduler, ...) on http://127.0.0.1:8081, login admin / admin"
	@echo "make artifacts [RUN=<run_id>] - list a run's lineage (default: latest run)"
	@echo "make data-status - catalog partitions (published delivery, rows, last audit) and rejected deliveries"
	@echo "make features [SQL=\"SELECT ...\"] - feature groups with counts, or SQL on the offline feature store"
	@echo "make stop       - stop the model endpoint (aws: delete the SageMaker endpoint; make endpoint-status / endpoint-predict TEXT=...)"
	@echo "make rollback   - serve the previous Approved model version again"
	@echo "make stack      - the production topology natively: Postgres, Celery + Redis, 2 workers, scheduler,"
	@echo "                  dag-processor, triggerer, api-server (make stack-status / make stack-stop)"
	@echo "make validate-aws CONF=<file> [DS=..] [PARAMS=json] - dry run of the aws backend: every SageMaker"
	@echo "                  request of one run for that config, and its problems (no AWS call)"
	@echo "make aws-bootstrap BUCKET=<name> [STACK=..] [REGION=..] [PARAMS=\"Key=Value ..\"] - the account's pieces"
	@echo "                  (aws/cloudformation.yaml: bucket, KMS key, IAM roles, Glue db, Athena workgroup, ECR, registry)"
	@echo "make aws-image [REGION=..] [TAG=..] - build aws/Dockerfile (DLC + the jobs' requirements), push to ECR"
	@echo "make lock       - recompile requirements.lock from requirements.txt (needs uv)"
	@echo "make chromium   - install Debian's chromium (apt-get) for the UI approval test (the test does it too)"

# uv installs the fully pinned lock in ~20 s where pip takes ~3 min (parallel downloads, no
# resolver: --no-deps, the lock is complete). pip does it when uv cannot be had.
UV_VERSION := 0.13.9
$(STAMP): requirements.lock
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@{ $(BIN)/pip install --disable-pip-version-check -q uv==$(UV_VERSION) && \
	   $(BIN)/uv pip install -q --python $(BIN)/python --no-deps $(PIP_LINKS) -r requirements.lock; } || \
	 { echo "uv failed: installing with pip"; \
	   $(BIN)/pip install --disable-pip-version-check -q $(PIP_LINKS) -r requirements.lock; }
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

.state/airflow/.migrated: $(STAMP)
	@$(ENV) airflow db migrate > "$$AIRFLOW_HOME/db-migrate.log" 2>&1 || { tail -20 "$$AIRFLOW_HOME/db-migrate.log"; exit 1; }
	@touch $@

land: install
	@$(ENV) $(BIN)/python -m include.data.landing --days $${DAYS:-30}

run: install .state/airflow/.migrated land
	@$(ENV) $(BIN)/python -m include.pipeline.cli run $(if $(DS),--ds $(DS),) $(if $(PROFILE),--profile $(PROFILE),) $(if $(CONF),--conf '$(CONF)',)

# Two pytest processes (TEST_WORKERS=0: one): the production stack's group in one, the rest in
# the other - measured faster on 2 cores (benchmarks/results/test_suite.json).
TEST_WORKERS ?= 2
XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadgroup)
test: install lint
	@$(ENV) $(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)

# The inner loop (<= 3 min on 2 cores): every test but the slow tier (whole DAG runs, the stack,
# the browser); tiers are pytest markers (pytest.ini), e.g. PYTEST_ARGS='-m aws' make test.
test-fast: install lint
	@$(ENV) $(BIN)/python -m pytest $(XDIST) -m "not slow" $(PYTEST_ARGS)

lint: install
	@$(BIN)/ruff check . && echo "ruff: clean"

readme: install
	@$(ENV) $(BIN)/python tools/readme_tables.py

# The docs site (mkdocs.yml, pages under docs/): --strict fails on a broken link, anchor or nav entry.
docs: install
	@NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

docs-serve: install
	@NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --strict --dev-addr 127.0.0.1:$${DOCS_PORT:-8000}

# Airflow's api-server, scheduler, dag-processor and triggerer on loopback. Login admin / admin:
# tools/env.sh names the user, `cli ui-login` writes its password (AIRFLOW_UI_PASSWORD, default admin).
ui: install .state/airflow/.migrated
	@$(ENV) $(BIN)/python -m include.pipeline.cli ui-login && \
	  AIRFLOW__API__HOST=127.0.0.1 AIRFLOW__API__PORT=$${AIRFLOW_PORT:-8081} airflow standalone

artifacts: install
	@$(ENV) $(BIN)/python -m include.pipeline.cli artifacts $(if $(RUN),--run-id '$(RUN)',)

data-status: install
	@$(ENV) $(BIN)/python -m include.pipeline.cli data-status

# Debian's chromium for tests/integration/test_ui_approval.py (playwright never downloads a browser).
chromium: install
	@$(ENV) $(BIN)/python -m tests.integration.browser

lock:
	UV=$${UV:-uv} tools/lock.sh

clean:
	@# a running stack would be left without its pid files: stop it first
	-@test ! -f .state/stack/stack.json || { $(ENV) $(BIN)/python -m include.pipeline.stack stop; }
	rm -rf .state
