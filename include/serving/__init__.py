"""The local model server (SageMaker inference contract over FastAPI/uvicorn)."""
