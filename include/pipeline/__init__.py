"""The pipeline: its steps as plain functions (``steps``, ``model_steps``), the run context and
lineage (``context``), the training profiles, the DAGs' shared defaults and assets, the ONE
Airflow glue module both DAGs use (``tasks``) and the command line (``cli``)."""
