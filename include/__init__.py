"""Library code for the review-sentiment pipeline (imported by DAGs and plugins)."""
