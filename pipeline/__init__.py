"""Federated diabetes-risk pipeline: validate extracts in place, train across hospitals,
track every global model, serve the current champion."""

__version__ = "0.1.0"
