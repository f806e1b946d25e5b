"""What the endpoint's client (``endpoint.py``) and server (``server.py``) agree on.

The model package's own handler (``include/scripts/inference.py``) runs inside the server or
a SageMaker container and cannot import this module; it declares the same JSON Lines media
type, and ``tests/unit/test_endpoint.py`` checks that the two agree.
"""
from __future__ import annotations

HOST = "127.0.0.1"
DEFAULT_PORT = 8080  # SageMaker's serving port
PORT_ENV = "ENDPOINT_PORT"
ADMIN_TOKEN_ENV = "REVIEWS_ENDPOINT_ADMIN_TOKEN"
JSONLINES = "application/jsonlines"
MAX_BODY_BYTES = 6 * 1024 * 1024  # SageMaker's real-time payload limit
# Optional API key for POST /invocations: when this variable is set in the server's environment,
# a request without the key (header X-Api-Key, or Authorization: Bearer <key>) answers 401.
API_KEY_ENV = "REVIEWS_ENDPOINT_API_KEY"
API_KEY_HEADER = "X-Api-Key"
# Serving limits and batching (environment of the server process; CLI flags override).
MAX_REVIEWS_ENV = "REVIEWS_ENDPOINT_MAX_REVIEWS"
DEFAULT_MAX_REVIEWS = 64  # reviews per request: 1,000 took ~20 s on 2 cores and starved everyone else
MAX_TEXT_CHARS_ENV = "REVIEWS_ENDPOINT_MAX_TEXT_CHARS"
DEFAULT_MAX_TEXT_CHARS = 10_000  # characters per review (the quality gate allows 5,000)
MAX_BATCH_ENV = "REVIEWS_ENDPOINT_MAX_BATCH"
DEFAULT_MAX_BATCH = 32  # reviews per forward pass across concurrent requests (1 = no batching)
MAX_WAIT_ENV = "REVIEWS_ENDPOINT_MAX_WAIT_MS"
DEFAULT_MAX_WAIT_MS = 5.0  # longest a batch waits for requests already arriving
PRECISIONS = ("fp32", "int8")

# Real reviews from the Women's E-Commerce Clothing Reviews data (CC0): 5, 3 and 1 stars.
# Every deploy answers them before it is declared healthy; `make run` shows the first one.
SMOKE_REVIEWS = (
    "I love, love, love this jumpsuit. it's fun, flirty, and fabulous! every time i wear it, "
    "i get nothing but great compliments!",
    "This tank fit well and i loved the ruffle in the back and how it layed. but the front was not "
    "a good look and i will be retuning it.",
    "These run very small!! they are also short, almost like a crop pant. the fit was so weird that "
    "i won't even exchange for a bigger size.",
)
