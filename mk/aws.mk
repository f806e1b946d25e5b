# The aws backend (docs/aws.md). Included by the top-level Makefile.
#   make validate-aws CONF=<file> [DS=YYYY-MM-DD] [PARAMS='{"profile": "quality"}']
#     - a dry run: every SageMaker request of one run for that configuration, and its problems;
#       no AWS call is made (exit 1 when the configuration has problems)
.PHONY: validate-aws

validate-aws: install
	@test -n "$(CONF)" || { echo 'usage: make validate-aws CONF=<aws config file> [DS=YYYY-MM-DD] [PARAMS=json]'; exit 2; }
	@$(ENV) $(BIN)/python -m include.pipeline.validate_aws --conf "$(CONF)" $(if $(DS),--ds $(DS),) $(if $(PARAMS),--params '$(PARAMS)',)
