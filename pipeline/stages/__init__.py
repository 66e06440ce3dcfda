"""The five DVC stages, one module each, every one a plain ``run(params, outputs)``."""
