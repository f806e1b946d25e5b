"""The pipeline's raw review schema (as in the course): what a landing file must hold."""
from __future__ import annotations

REQUIRED_COLUMNS = ("review_id", "product_category", "review_body", "star_rating")
OPTIONAL_COLUMNS = ("review_date",)  # DESIGN: review_date is optional in the raw schema
RAW_COLUMNS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
