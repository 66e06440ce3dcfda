"""Typed, validated view of params.yaml.

Every tunable value lives in params.yaml; this module turns it into pydantic models so that a
misspelled key or an out-of-range value fails early with a message naming the key.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from pipeline.core.errors import UserError

SNACK_CLASSES: tuple[str, ...] = (
    "apple", "banana", "cake", "candy", "carrot", "cookie", "doughnut", "grape", "hot dog",
    "ice cream", "juice", "muffin", "orange", "pineapple", "popcorn", "pretzel", "salad",
    "strawberry", "waffle", "watermelon",
)  # fmt: skip

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
PositiveInt = Annotated[int, Field(gt=0)]


class Section(BaseModel):
    """Base for every params section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(Section):
    root: Path = Path("data")
    # "snacks" (the 20 classes of the book), "auto" (derived from the train split),
    # or an explicit list of class names.
    classes: Literal["snacks", "auto"] | list[str] = "snacks"

    @field_validator("classes")
    @classmethod
    def _unique_classes(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list):
            if len(value) < 2:
                raise ValueError("needs at least two class names")
            if len(set(value)) != len(value):
                raise ValueError("class names must be unique")
        return value


class SynthParams(Section):
    seed: int = 2024
    train_images: PositiveInt = 1500
    val_images: PositiveInt = 300
    test_images: PositiveInt = 300
    min_side: Annotated[int, Field(ge=32)] = 192
    max_side: Annotated[int, Field(ge=32)] = 512
    inject_defects: bool = True
    # Share of images given one wrong but well-formed annotation (pipeline/data/synth/noise.py).
    label_noise: Fraction = 0.0
    # Which object of an image gets it: the main one (what a one-box model finds) or any.
    label_noise_objects: Literal["main", "any"] = "main"


class ValidateParams(Section):
    # The stage fails when more than this share of rows is quarantined.
    max_bad_fraction: Fraction = 0.15
    # Boxes smaller than this (normalized width or height) are quarantined.
    min_box_size: Fraction = 0.01
    # Images with fewer pixels per side are quarantined; larger ones are refused unread.
    min_image_side: PositiveInt = 16
    max_image_pixels: PositiveInt = 89_478_485  # Pillow's decompression-bomb limit
    # Build the Great Expectations Data Docs HTML (outputs/validate/data_docs, ~4 MB).
    data_docs: bool = True


class DedupParams(Section):
    # Boxes of the same image and class with IoU above this are one object annotated twice.
    box_iou_threshold: Fraction = 0.95
    # How such boxes become one: "mean" (coordinate-wise mean) or "first" (keep the first row).
    box_merge: Literal["mean", "first"] = "mean"
    # Images whose 64-bit perceptual hashes differ in at most this many bits are near-duplicates.
    near_duplicate_distance: Annotated[int, Field(ge=0, le=32)] = 4
    # A val/test image that duplicates an image of an earlier split: "drop_from_eval" removes
    # it from the later split, "keep" only reports it, "fail" stops the stage.
    leakage: Literal["drop_from_eval", "keep", "fail"] = "drop_from_eval"


# Width multipliers (alpha) of each backbone family: those with published ImageNet weights.
BACKBONE_ALPHAS: dict[str, tuple[float, ...]] = {
    "mobilenet": (0.25, 0.5, 0.75, 1.0),
    "mobilenet_v2": (0.35, 0.5, 0.75, 1.0, 1.3, 1.4),
    "mobilenet_v3_small": (0.75, 1.0),
    "mobilenet_v3_large": (0.75, 1.0),
}
WEIGHT_FILE_SUFFIXES: tuple[str, ...] = (".keras", ".h5", ".hdf5")


class DetectParams(Section):
    """The detector's settings (``model.task: detect``; pipeline/model/detect_*.py)."""

    # Boxes per training image the loader keeps (the largest first); the rest are dropped.
    max_boxes: Annotated[int, Field(ge=1, le=200)] = 20
    # Detections the saved model returns per image after non-maximum suppression.
    max_detections: Annotated[int, Field(ge=1, le=300)] = 100
    # Detections scoring below this are not returned (COCO scoring wants a low one).
    score_threshold: Fraction = 0.05
    # Non-maximum suppression: a box overlapping a better one of its class by more is dropped.
    iou_threshold: Fraction = 0.5
    # Centre sampling: a cell learns a box when its centre lies inside the box and within
    # this many cells of the box centre (FCOS: 1.5 strides).
    center_radius: Annotated[float, Field(gt=0, le=8)] = 1.5
    # Which cells learn a box: "centre" (centre sampling, above) or "aligned" (of the cells
    # inside it, the ``topk`` whose predictions fit it best: TOOD's task alignment, with
    # soft class targets of its own, so ``class_target`` applies to "centre" only).
    assigner: Literal["centre", "aligned"] = "centre"
    topk: Annotated[int, Field(ge=1, le=64)] = 9
    # The class target of a cell that learns a box: "onehot" (focal loss, 1 for its class) or
    # "iou" (quality focal loss: the IoU of the cell's predicted box, so that scores rank the
    # well-placed boxes first).
    class_target: Literal["onehot", "iou"] = "iou"
    # Where the head's Conv2D 3x3 runs: 16 (on the backbone's map upsampled to stride 16) or
    # 32 (on the backbone's map, then upsampled: a quarter of the multiply-adds, a wider view).
    conv_stride: Literal[16, 32] = 32
    # FPN's lateral connection: the backbone's own stride-16 map (through a Conv2D 1x1 and
    # BatchNorm) added to the upsampled head, so that the cells of two objects side by side
    # see each its own, not one view interpolated from stride 32 (docs/detection.md).
    lateral: bool = True
    # The box loss's weight against the class loss, the detector's own (train.box_loss_weight
    # is the two heads'): at 1.0 the class side learns more (docs/detection.md).
    box_loss_weight: Annotated[float, Field(ge=0)] = 1.0
    # The detector's peak learning rate from random init (train.learning_rate is the two
    # heads', and the transfer recipe's of both); the schedule and warmup are train's. Its
    # loss is another sum than the two heads': at 0.008 it fits more in the same epochs
    # (docs/detection.md). Ignored with pretrained weights, where it lost.
    learning_rate: Annotated[float, Field(gt=0, le=1)] = 8e-3


class ModelParams(Section):
    # "localize": the book's two heads, one class and one box per image; "detect": every
    # object of the image, with class, score and box, from a per-cell head (docs/detection.md).
    task: Literal["localize", "detect"] = "localize"
    # mobilenet (v1, the book's) | mobilenet_v2 | mobilenet_v3_small | mobilenet_v3_large
    backbone: Literal["mobilenet", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large"] = (
        "mobilenet"
    )
    alpha: Literal[0.25, 0.35, 0.5, 0.75, 1.0, 1.3, 1.4] = 0.5  # valid per family: BACKBONE_ALPHAS
    image_size: Annotated[int, Field(ge=32, le=512, multiple_of=32)] = 128
    # "none" trains from random init (offline default); "imagenet" needs Keras' download;
    # a path to a .keras / .h5 model or weights file reuses that file's backbone.
    weights: str = "none"
    dropout: Fraction = 0.2
    box_head_filters: PositiveInt = 256
    # "grid": each cell of the feature grid proposes a box, a softmax over the cells weighs
    # them (keeps where things are); "pooled": global average pooling, then Dense (the book).
    # "auto": grid on pretrained features (better boxes on real photos), pooled from random
    # init (as good there, and the better class accuracy of the two).
    box_head: Literal["auto", "grid", "pooled"] = "auto"
    # Output of the pooled head: "sigmoid": every prediction is a valid box (in [0, 1],
    # min <= max); "linear": the book's unbounded Dense(4).
    box_output: Literal["sigmoid", "linear"] = "sigmoid"
    detect: DetectParams = DetectParams()

    @field_validator("weights")
    @classmethod
    def _weights_source(cls, value: str) -> str:
        if value in {"none", "imagenet"} or value.endswith(WEIGHT_FILE_SUFFIXES):
            return value
        raise ValueError(f"needs none, imagenet or a path ending in {WEIGHT_FILE_SUFFIXES}")

    @property
    def pretrained(self) -> bool:
        """True when the backbone starts from trained weights: the transfer recipe applies."""
        return self.weights != "none"

    @property
    def head(self) -> Literal["grid", "pooled"]:
        """The box head built: ``box_head`` with "auto" resolved."""
        if self.box_head == "auto":
            return "grid" if self.pretrained else "pooled"
        return self.box_head

    @model_validator(mode="after")
    def _alpha_of_family(self) -> ModelParams:
        alphas = BACKBONE_ALPHAS[self.backbone]
        if self.alpha not in alphas:
            raise ValueError(f"alpha {self.alpha} does not exist for {self.backbone}: use {alphas}")
        return self


class AugmentParams(Section):
    hflip: bool = True
    # Random crop covering [min, max] of the image area, resized back (1.0 = off).
    crop_scale: tuple[Fraction, Fraction] = (0.6, 1.0)
    # A crop must keep at least this share of the target box's area.
    min_visible: Fraction = 0.7
    # Brightness / contrast / saturation drawn from [1 - j, 1 + j] (0 = off).
    color_jitter: Annotated[float, Field(ge=0, lt=1)] = 0.2
    # Zoom out for half the samples: the image on a canvas up to this many times its side
    # (mean-colour fill), so objects appear smaller. 1.0 = off.
    zoom_out: Annotated[float, Field(ge=1, le=4)] = 1.5

    @field_validator("crop_scale")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] <= value[1]:
            raise ValueError("needs 0 < min <= max <= 1")
        return value


class TransferParams(Section):
    """The transfer recipe: how a pretrained backbone is trained (keras-io's transfer-learning
    guide). First the heads alone on the frozen backbone, so that their random init sends no
    large gradients into the pretrained features; then everything, at a lower learning rate,
    with the backbone's BatchNorm layers kept in inference mode (their pretrained moving
    statistics), as inference will use them."""

    # Epochs of the first phase: the backbone frozen, the heads train (at most all the
    # epochs: then nothing is fine-tuned, as in the book). 0: no such phase.
    head_epochs: Annotated[int, Field(ge=0)] = 10
    # Then the whole model trains at the learning rate x this.
    fine_tune_lr_factor: Annotated[float, Field(gt=0, le=1)] = 0.1
    # Keep the backbone's BatchNorm statistics while fine-tuning (false: they train too).
    freeze_batchnorm: bool = True


class TrainParams(Section):
    seed: int = 42
    epochs: PositiveInt = 45
    batch_size: PositiveInt = 32
    learning_rate: Annotated[float, Field(gt=0, le=1)] = 3e-3
    # "step": divide by 10 at each of lr_drop_epochs (1-based), as the book does;
    # "cosine": one cosine decay to zero over all epochs after a linear warmup epoch.
    lr_schedule: Literal["step", "cosine"] = "cosine"
    lr_drop_epochs: list[PositiveInt] = [16, 21]
    weight_decay: Annotated[float, Field(ge=0, lt=1)] = 0.05  # AdamW when > 0
    # Scale each step's gradients down to this global norm when above it (0 = off).
    clip_norm: Annotated[float, Field(ge=0)] = 10.0
    # Share of the class target spread over all classes (0 = plain cross-entropy).
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.1
    # Moving average of the weights, used for validation and kept at the end (0 = off).
    ema_momentum: Annotated[float, Field(ge=0, lt=1)] = 0.99
    # Box loss: "mse" (the book, weight 10) or "giou" (1 - generalized IoU) or "giou_l1".
    box_loss: Literal["mse", "giou", "giou_l1"] = "giou_l1"
    box_loss_weight: Annotated[float, Field(ge=0)] = 2.0
    # "image": one sample per image, target = its largest box of the folder class;
    # "rows": one sample per CSV row (the book's generator).
    target: Literal["image", "rows"] = "image"
    augment: AugmentParams = AugmentParams()
    cache_images: bool = True
    workers: PositiveInt = 2
    # Share of training images; 1.0 uses all. Handy for quick experiments.
    subset: Annotated[float, Field(gt=0, le=1)] = 1.0
    # How a pretrained backbone (model.weights not none) is trained; ignored from random init.
    transfer: TransferParams = TransferParams()
    # While frozen (and augmentation is off): compute backbone features once, fit heads on them.
    cache_features: bool = False
    # Stop when val_loss has not improved for this many epochs (best weights kept); 0: off.
    early_stopping_patience: Annotated[int, Field(ge=0)] = 0
    # Hardware (pipeline/model/hardware.py): "auto" turns mixed precision / XLA on only with a GPU;
    # strategy "auto" mirrors across GPUs when there are several; "multi_worker" trains across
    # processes or hosts, the cluster given by the TF_CONFIG environment variable.
    mixed_precision: Literal["auto", "on", "off"] = "auto"
    jit_compile: Literal["auto", "on", "off"] = "auto"
    strategy: Literal["auto", "default", "mirrored", "multi_worker"] = "auto"
    # Deterministic TensorFlow ops (same results run to run; slower on a GPU).
    deterministic: bool = False

    @model_validator(mode="after")
    def _phases_fit(self) -> TrainParams:
        a = self.augment
        augmenting = a.hflip or a.crop_scale[0] < 1.0 or a.color_jitter > 0 or a.zoom_out > 1
        if self.cache_features and (self.transfer.head_epochs == 0 or augmenting):
            raise ValueError(
                "cache_features needs a frozen backbone (transfer.head_epochs > 0) and "
                "augmentation off (augment: hflip false, crop_scale [1, 1], color_jitter 0, "
                "zoom_out 1)"
            )
        if self.cache_features and self.strategy == "multi_worker":
            # Not wired: each worker would extract the features of every image (untested).
            raise ValueError("cache_features is not supported with strategy multi_worker")
        return self


GateMetric = Literal[
    "accuracy", "top3_accuracy", "mean_iou", "median_iou", "iou50_rate", "iou75_rate", "corloc",
    "map", "map50", "ar100", "agnostic_recall50",
]  # fmt: skip


class EvaluateParams(Section):
    # The primary split: plots, gallery, registry tags and the promotion gate use it.
    split: Literal["val", "test"] = "test"
    # Further splits scored with the same metrics (and per-class table).
    extra_splits: list[Literal["val", "test"]] = ["val"]
    batch_size: PositiveInt = 64
    # Images in each of the best / worst / random prediction galleries.
    gallery_images: Annotated[int, Field(ge=1, le=64)] = 8
    # How far above the trivial baseline (majority class, mean training box) a model must
    # score to count as better than it: more than 0 and at least this much, per metric.
    # Short of it, evaluate warns and the registry gate refuses @champion.
    baseline_margin: dict[GateMetric, Fraction] = {"mean_iou": 0.05, "corloc": 0.0}


class ReviewParams(Section):
    """The label review (pipeline/stages/review.py)."""

    # Splits ranked together, by the trained model (which did not train on them).
    splits: Annotated[list[Literal["val", "test"]], Field(min_length=1)] = ["val", "test"]
    batch_size: PositiveInt = 64
    # Top suspects drawn in the gallery (given box dashed, suggested box solid).
    gallery_images: Annotated[int, Field(ge=1, le=64)] = 12
    # Also rank the train split, from heads trained on the other folds over the trained
    # backbone's features (pipeline/model/crossval.py); 0 leaves train unranked.
    folds: Annotated[int, Field(ge=0, le=20)] = 5
    fold_epochs: Annotated[int, Field(ge=1, le=200)] = 10

    @field_validator("folds")
    @classmethod
    def _folds(cls, value: int) -> int:
        if value == 1:
            raise ValueError("1 fold holds nothing out: 0 (train not ranked) or 2 and more")
        return value


class GateParams(Section):
    """When a new model version may replace the champion (pipeline/evaluation/gate.py)."""

    metric: GateMetric = "corloc"
    # The gate metric of a detector (model.task: detect): COCO mAP at IoU 0.5.
    detect_metric: GateMetric = "map50"
    # Promote only when the metric beats the champion's by at least this much (and by > 0).
    margin: Annotated[float, Field(ge=0, le=1)] = 0.01
    # The candidate must also beat the trivial baseline on the gate metric.
    beat_baseline: bool = True
    # Absolute minimums the candidate must reach, whatever the champion.
    floors: dict[GateMetric, Fraction] = {"accuracy": 0.25, "corloc": 0.1}


class RegisterParams(Section):
    model_name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")] = "snackloc"
    gate: GateParams = GateParams()


class MlflowParams(Section):
    experiment: Annotated[str, Field(min_length=1)] = "snackloc"


class Params(Section):
    """The whole of params.yaml."""

    data: DataParams = DataParams()
    synth: SynthParams = SynthParams()
    validate_: ValidateParams = Field(default=ValidateParams(), alias="validate")
    dedup: DedupParams = DedupParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    register_: RegisterParams = Field(default=RegisterParams(), alias="register")
    mlflow: MlflowParams = MlflowParams()
    review: ReviewParams = ReviewParams()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _features_need_pretrained(self) -> Params:
        if self.train.cache_features and not self.model.pretrained:
            # Only a pretrained backbone has a frozen phase to cache features for.
            raise ValueError("train.cache_features needs pretrained model.weights (not none)")
        if self.model.task == "detect" and (
            self.train.cache_features or self.train.strategy == "multi_worker"
        ):
            # Not wired for the detector's targets (every box of an image).
            raise ValueError("model.task detect supports neither cache_features nor multi_worker")
        return self


# Keys that moved: a params.yaml written for an earlier layout gets the new name.
MOVED_KEYS = {
    "train.freeze_backbone_epochs": "train.transfer.head_epochs",
    "train.fine_tune_lr_factor": "train.transfer.fine_tune_lr_factor",
}


def _keys_under(parents: list[str]) -> list[str]:
    """The keys params.yaml may hold under the dotted section ``parents`` ([] = top level)."""
    model: object = Params
    for part in parents:
        fields = (
            model.model_fields if isinstance(model, type) and issubclass(model, BaseModel) else {}
        )
        field = next((f for n, f in fields.items() if (f.alias or n) == part), None)
        model = field.annotation if field else None
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return []
    return [field.alias or name for name, field in model.model_fields.items()]


def _describe(error: dict) -> str:
    """One line per pydantic error: dotted key, message and the offending value."""
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden" and key in MOVED_KEYS:
        return f"  {key}: now {MOVED_KEYS[key]}"
    if error["type"] == "extra_forbidden":
        *parents, name = (str(part) for part in error["loc"])
        close = difflib.get_close_matches(name, _keys_under(parents), n=1)
        guess = f"did you mean {'.'.join([*parents, close[0]])}?" if close else "misspelled?"
        return f"  {key}: unknown key ({guess})"
    return f"  {key}: {error['msg']} (got {error.get('input')!r})"


def load_params(path: Path | str = "params.yaml") -> Params:
    """Read and validate params.yaml; raise UserError listing every bad key."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found", hint="run from the project root")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        lines = "\n".join(_describe(err) for err in exc.errors())
        raise UserError(f"{path}: invalid parameters\n{lines}") from None


def resolve_classes(params: DataParams, train_class_names: list[str] | None = None) -> list[str]:
    """The class list the model predicts, in index order."""
    if params.classes == "snacks":
        return list(SNACK_CLASSES)
    if params.classes == "auto":
        if not train_class_names:
            raise UserError("data.classes is 'auto' but the train split has no class names")
        return sorted({name for name in train_class_names if isinstance(name, str) and name})
    return list(params.classes)
