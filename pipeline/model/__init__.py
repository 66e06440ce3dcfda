"""The network and what feeds it: backbones, the two-head model, the training recipe,
augmentation, the loader and the hardware setup. Imports ``pipeline.core`` and
``pipeline.data``."""
