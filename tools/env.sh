# Environment of the project's local Airflow. Sourced by the Makefile; `source tools/env.sh`
# in a shell gives you the same `airflow` CLI (e.g. `airflow tasks test ...`).
_root="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)"
export REVIEWS_HOME="${REVIEWS_HOME:-$_root/.state}"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$REVIEWS_HOME/airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="$_root/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$_root/plugins"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT=120
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="${AIRFLOW__CORE__EXECUTION_API_SERVER_URL:-http://127.0.0.1:${AIRFLOW_PORT:-8081}/execution/}"
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="${AIRFLOW__DATABASE__SQL_ALCHEMY_CONN:-sqlite:///$AIRFLOW_HOME/airflow.db}"
# The UI's login (make ui): user admin with role admin; its password is written into this file
# by `python -m include.pipeline.cli ui-login` (AIRFLOW_UI_PASSWORD, default admin) before start.
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS:-admin:admin}"
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE="${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:-$AIRFLOW_HOME/simple_auth_manager_passwords.json}"
export AIRFLOW__LOGGING__LOGGING_LEVEL="${AIRFLOW__LOGGING__LOGGING_LEVEL:-INFO}"
export PATH="$_root/.venv/bin:$PATH"
export PYTHONPATH="$_root:$_root/plugins${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:-sqlite:///$REVIEWS_HOME/mlflow/mlflow.db}"
mkdir -p "$AIRFLOW_HOME" "$REVIEWS_HOME/mlflow"
unset _root
