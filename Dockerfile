# The image of docker-compose.yaml: the Airflow release the project pins, plus requirements.lock.
# The project's code (dags/, plugins/, include/) is mounted by the compose file, not copied.
FROM apache/airflow:3.3.2-python3.11
# torch==2.13.0 CPU build: point PIP_EXTRA_INDEX_URL at a CPU wheel index when building
# (docker compose build --build-arg PIP_EXTRA_INDEX_URL=...); the default index has the CUDA one.
ARG PIP_EXTRA_INDEX_URL=""
COPY --chown=airflow:0 requirements.lock /opt/airflow/requirements.lock
RUN pip install --no-cache-dir -r /opt/airflow/requirements.lock
