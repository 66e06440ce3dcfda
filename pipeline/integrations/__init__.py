"""The edge to MLflow and Prefect: the only room of ``pipeline`` that imports them.

Imports the library rooms (core, data, model, evaluation), never a stage."""
