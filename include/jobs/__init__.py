"""Processing and training jobs: SageMaker-shaped request builders (``requests``) and the
runners that execute them (``runner``: the local runner | the Amazon provider's operators)."""
