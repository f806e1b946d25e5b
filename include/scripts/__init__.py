"""The job scripts. They run inside a job as ``python /opt/ml/code/<script>.py`` (SageMaker's
container, or the local runner's subprocess), where their folder is ``sys.path[0]``, so they import
their siblings one way: as top-level modules (``from common import ...``). Importing one as
``include.scripts.<name>`` (tests, benchmarks) puts this folder on ``sys.path`` so that the very same
imports resolve; Airflow itself never imports them.
"""
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.append(_HERE)
