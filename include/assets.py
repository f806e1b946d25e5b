"""Airflow assets shared by the DAGs (data-aware scheduling).

``REVIEWS_LANDING``: a landing partition was registered in the catalog. The main pipeline's
``register_dataset`` task declares it as an outlet; ``review_catalog_analysis`` is
scheduled on it, so the analysis refreshes after each new partition.
``REVIEWS_CATALOG``: the catalog was updated by ``review_catalog_analysis``'s register task.
"""
from __future__ import annotations

from airflow.sdk import Asset

REVIEWS_LANDING = Asset(name="reviews_landing", uri="reviews://landing/reviews", group="reviews")
REVIEWS_CATALOG = Asset(name="reviews_catalog", uri="reviews://catalog/reviews_raw", group="reviews")
