"""The edge to MLflow: the only room of ``pipeline`` that imports it (Prefect is imported
only by the top-level ``flows/``).

Imports the library rooms (core, data, model, evaluation), never a stage."""
