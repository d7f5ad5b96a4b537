"""Serve a registered GEPA winner: load it from MLflow, bind it to a live LM, predict.

    python -m gepa_lab.serve check --model-uri models:/NAME@champion --tracking-uri URI --n 5 [--api-base URL]
    python -m gepa_lab.serve predict --model-uri models:/NAME/3 --tracking-uri URI --input '{"query": "..."}'
"""
from gepa_lab.serve.model import ServedModel, ServeError, check, load_model, test_examples

__all__ = ["ServedModel", "ServeError", "check", "load_model", "test_examples"]
