"""Serving: endpoint control (``endpoint``), the model server (``server``) and the protocol
constants both sides share (``protocol``)."""
