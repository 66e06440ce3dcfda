"""The MobileNet feature extractors (no top) and where their starting weights come from.

Families: ``mobilenet`` (v1, the book's), ``mobilenet_v2``, ``mobilenet_v3_small`` and
``mobilenet_v3_large``, all from ``keras.applications``. v1 and v2 expect pixels scaled to
[-1, 1], which the two-head model does in its own ``preprocess`` layer; v3 rescales 0-255
pixels itself (Keras' ``include_preprocessing``). Either way the model takes 0-255 pixels.

Starting weights (``model.weights``):

- ``none``: random init;
- ``imagenet``: Keras' ImageNet weights (downloaded once into ``$KERAS_HOME/models``);
- a path to a Keras model (``.keras``, or ``.h5`` incl. legacy Keras 2 files Keras 3 can load)
  whose backbone is reused, e.g. the book's fine-tuned classifier (its first layer is the
  MobileNet sub-model) or an earlier snackloc model; or a weights file of the backbone alone
  (``.weights.h5``, or a legacy ``.h5`` weights file like Keras' ImageNet downloads).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
from keras import layers

from pipeline.core.config import ModelParams
from pipeline.core.errors import UserError

SCRATCH_BN_MOMENTUM = 0.9


@dataclass(frozen=True)
class Family:
    """What snackloc needs to know about one MobileNet generation."""

    constructor: Callable[..., keras.Model]
    # Input sizes with published ImageNet weights; None: one set of weights for every size.
    imagenet_sizes: tuple[int, ...] | None
    # True when the Keras model rescales 0-255 pixels itself (include_preprocessing).
    rescales_input: bool


FAMILIES: dict[str, Family] = {
    "mobilenet": Family(keras.applications.MobileNet, (128, 160, 192, 224), False),
    "mobilenet_v2": Family(keras.applications.MobileNetV2, (96, 128, 160, 192, 224), False),
    "mobilenet_v3_small": Family(keras.applications.MobileNetV3Small, None, True),
    "mobilenet_v3_large": Family(keras.applications.MobileNetV3Large, None, True),
}


def check_params(params: ModelParams) -> None:
    """Raise UserError when the starting weights cannot be had.

    That is a size without ImageNet weights, or a weights path that is not a file.
    (ModelParams itself rejects a width that does not exist for the family.)
    """
    sizes = FAMILIES[params.backbone].imagenet_sizes
    if params.weights == "imagenet" and sizes and params.image_size not in sizes:
        raise UserError(
            f"model.image_size={params.image_size} has no ImageNet {params.backbone} weights",
            hint=f"use one of {sizes}, or model.weights: none",
        )
    if params.weights not in {"none", "imagenet"} and not Path(params.weights).is_file():
        raise UserError(
            f"model.weights: {params.weights} is not a file",
            hint="give none, imagenet, or the path of a .keras / .h5 model or weights file",
        )


def build_backbone(params: ModelParams) -> keras.Model:
    """The feature extractor of ``params.backbone``, initialised as ``params.weights`` says."""
    check_params(params)
    if params.weights == "none":
        backbone = new_backbone(params, weights=None)
        # From random init the features move fast; BatchNorm's moving statistics must keep
        # up or inference (validation) collapses to one class. Keras' 0.99 lags too far
        # behind on a few hundred steps; 0.9 follows (measured: val accuracy 0.05 vs 0.23).
        for layer in backbone.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.momentum = SCRATCH_BN_MOMENTUM
        return backbone
    if params.weights == "imagenet":
        return imagenet_backbone(params)
    return backbone_from_file(params, Path(params.weights))


def new_backbone(params: ModelParams, weights: str | None) -> keras.Model:
    """``keras.applications`` constructor call for the family (no top, square input)."""
    size = params.image_size
    return FAMILIES[params.backbone].constructor(
        input_shape=(size, size, 3), alpha=params.alpha, include_top=False, weights=weights
    )


def imagenet_backbone(params: ModelParams) -> keras.Model:
    """The backbone with Keras' ImageNet weights; a clear error when they cannot be had."""
    try:
        return new_backbone(params, weights="imagenet")
    except Exception as exc:  # network errors come in many types
        raise UserError(
            f"could not load ImageNet weights for {params.backbone} (alpha={params.alpha}): {exc}",
            hint="this host may be offline: copy the weights file into ~/.keras/models/ "
            "(or $KERAS_HOME/models/), or set model.weights: none",
        ) from None


def backbone_from_file(params: ModelParams, path: Path) -> keras.Model:
    """A new backbone whose weights come from a model or weights file."""
    backbone = new_backbone(params, weights=None)
    source = load_source_model(path)
    if source is None:
        load_backbone_weights(backbone, path, params)
        return backbone
    found = find_backbone(source)
    if found is None:
        raise UserError(
            f"{path}: no MobileNet backbone found in model {source.name!r}",
            hint="the file needs a keras.applications MobileNet (v1, v2 or v3), nested or not",
        )
    family, sub_model = found
    if family != params.backbone:
        raise UserError(
            f"{path}: its backbone is {family}, but model.backbone is {params.backbone}",
            hint=f"set model.backbone: {family}",
        )
    size = sub_model.inputs[0].shape[1]
    if size is not None and size != params.image_size:
        raise UserError(
            f"{path}: its backbone takes {size} px images, but model.image_size is "
            f"{params.image_size}",
            hint=f"set model.image_size: {size}",
        )
    copy_weights(sub_model, backbone, path)
    return backbone


def load_source_model(path: Path) -> keras.Model | None:
    """The model saved in ``path``, or None when the file holds weights only."""
    if path.name.endswith(".weights.h5"):
        return None
    if path.suffix in {".h5", ".hdf5"} and not _has_model(path):
        return None
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # unknown layers, Lambda layers in safe mode, corrupt files
        raise UserError(
            f"{path}: Keras could not load this model: {exc}",
            hint="save the backbone's weights alone (backbone.save_weights('x.weights.h5')) "
            "and point model.weights at that file",
        ) from None


def _has_model(path: Path) -> bool:
    """True for an HDF5 file written by model.save (it carries the model config)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return "model_config" in f.attrs
    except OSError as exc:
        raise UserError(f"{path}: not a readable HDF5 file: {exc}") from None


def family_of(model: keras.Model) -> str | None:
    """The MobileNet family whose layer names ``model`` has, or None."""
    names = {layer.name for layer in model.layers}
    if "conv_dw_1" in names:
        return "mobilenet"
    if "block_1_expand" in names:
        return "mobilenet_v2"
    if "expanded_conv_depthwise" in names:
        # Large has 15 inverted-residual blocks (expanded_conv ... expanded_conv_14), Small 11.
        large = "expanded_conv_14_depthwise" in names
        return "mobilenet_v3_large" if large else "mobilenet_v3_small"
    return None


def find_backbone(model: keras.Model) -> tuple[str, keras.Model] | None:
    """(family, model) of the MobileNet in ``model``: the model itself or a nested sub-model.

    The book's classifier nests the MobileNet as its first layer; a classifier built on
    ``base.output`` has the MobileNet layers at its own top level; both are found.
    """
    family = family_of(model)
    if family is not None:
        return family, model
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found = find_backbone(layer)
            if found is not None:
                return found
    return None


def copy_weights(source: keras.Model, target: keras.Model, path: Path) -> None:
    """Copy every weighted layer of ``target`` from the same-named layer of ``source``."""
    for layer in target.layers:
        if not layer.weights:
            continue
        try:
            values = source.get_layer(layer.name).get_weights()
        except ValueError:
            raise UserError(f"{path}: its backbone has no layer {layer.name!r}") from None
        want = [tuple(w.shape) for w in layer.weights]
        got = [tuple(v.shape) for v in values]
        if want != got:
            raise UserError(
                f"{path}: layer {layer.name!r} has weights of shape {got}, this backbone {want}",
                hint="the file's backbone has another width: set model.alpha to its value",
            )
        layer.set_weights(values)


def load_backbone_weights(backbone: keras.Model, path: Path, params: ModelParams) -> None:
    """Load a weights-only file into the backbone; a clear error when it does not fit."""
    try:
        backbone.load_weights(path)
    except Exception as exc:  # Keras raises ValueError, KeyError or h5py errors here
        raise UserError(
            f"{path}: these weights do not fit model.backbone={params.backbone} "
            f"alpha={params.alpha}: {exc}",
            hint="the file must hold the weights of this very backbone (family and alpha)",
        ) from None
