# The aws backend (docs/aws.md). Included by the top-level Makefile.
#   make validate-aws CONF=<file> [DS=YYYY-MM-DD] [PARAMS='{"profile": "quality"}']
#     - a dry run: every SageMaker request of one run for that configuration, its problems and the
#       IAM actions it needs; no AWS call is made (exit 1 when the configuration has problems)
#   make aws-bootstrap BUCKET=<name> [STACK=review-sentiment] [REGION=..] [PARAMS="Key=Value ..."]
#     - create or update the CloudFormation stack of aws/cloudformation.yaml (bucket, KMS key, the two
#       roles with aws/iam/*.json, Glue database, Athena workgroup, ECR repository, model package group);
#       PARAMS: the template's parameters (ProjectName, Prefix, GlueDatabase, AthenaWorkGroup, ...)
#   make aws-image [REGION=..] [REPO=review-sentiment] [TAG=<git sha>] [BASE=<DLC image>]
#     - build aws/Dockerfile (the inference DLC + the jobs' requirements) and push it to ECR
.PHONY: validate-aws aws-bootstrap aws-image

STACK ?= review-sentiment
REPO ?= review-sentiment
TAG ?= $(shell git rev-parse --short HEAD)

validate-aws: install
	@test -n "$(CONF)" || { echo 'usage: make validate-aws CONF=<aws config file> [DS=YYYY-MM-DD] [PARAMS=json]'; exit 2; }
	@$(ENV) $(BIN)/python -m include.pipeline.validate_aws --conf "$(CONF)" $(if $(DS),--ds $(DS),) $(if $(PARAMS),--params '$(PARAMS)',)

aws-bootstrap: install
	@test -n "$(BUCKET)" || { echo 'usage: make aws-bootstrap BUCKET=<bucket name> [STACK=..] [REGION=..] [PARAMS="Key=Value ..."]'; exit 2; }
	@$(BIN)/python tools/aws_bootstrap.py deploy --bucket "$(BUCKET)" --stack "$(STACK)" $(if $(REGION),--region $(REGION),) \
		$(foreach p,$(PARAMS),--param $(p))

aws-image:
	@command -v docker >/dev/null || { echo 'make aws-image needs docker (and the aws CLI for the ECR login)'; exit 2; }
	@set -euo pipefail; region=$${REGION:-$$(aws configure get region)}; \
	account=$$(aws sts get-caller-identity --query Account --output text); \
	registry=$$account.dkr.ecr.$$region.amazonaws.com; \
	aws ecr get-login-password --region $$region | docker login --username AWS --password-stdin 763104351884.dkr.ecr.$$region.amazonaws.com; \
	aws ecr get-login-password --region $$region | docker login --username AWS --password-stdin $$registry; \
	docker build -f aws/Dockerfile $(if $(BASE),--build-arg BASE=$(BASE),--build-arg BASE=763104351884.dkr.ecr.$$region.amazonaws.com/huggingface-pytorch-inference:2.6.0-transformers4.49.0-cpu-py312-ubuntu22.04) -t $$registry/$(REPO):$(TAG) .; \
	docker push $$registry/$(REPO):$(TAG); \
	echo "pushed $$registry/$(REPO):$(TAG): set it as steps.<step>.image_uri and endpoint_image_uri"
