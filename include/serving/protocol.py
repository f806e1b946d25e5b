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
