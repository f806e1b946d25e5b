# Feature store (include/data/feature_store.py). Included by the top-level Makefile.
#   make features                      - feature groups with record counts (offline and online)
#   make features SQL="SELECT ..."     - read-only SQL; a feature group is the view feature_store.<name>
#   make features-get ID=<review_id>   - a record from the online store
.PHONY: features features-get

features: install
	@$(ENV) $(BIN)/python -m include.data.feature_store $(if $(SQL),query "$$SQL",list)

features-get: install
	@test -n "$(ID)" || { echo 'usage: make features-get ID=<review_id> [GROUP=reviews_features]'; exit 2; }
	@$(ENV) $(BIN)/python -m include.data.feature_store get $${GROUP:-reviews_features} "$$ID"
