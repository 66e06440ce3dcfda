"""Typed, validated view of params.yaml.

Every tunable value lives in params.yaml; this module turns it into pydantic models so that a
misspelled key or an out-of-range value fails early with a message naming the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipeline.errors import UserError

SNACK_CLASSES: tuple[str, ...] = (
    "apple", "banana", "cake", "candy", "carrot", "cookie", "doughnut", "grape", "hot dog",
    "ice cream", "juice", "muffin", "orange", "pineapple", "popcorn", "pretzel", "salad",
    "strawberry", "waffle", "watermelon",
)  # fmt: skip

SPLITS: tuple[str, ...] = ("train", "val", "test")

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


class ValidateParams(Section):
    # The stage fails when more than this share of rows is quarantined.
    max_bad_fraction: Fraction = 0.15
    # Boxes smaller than this (normalized width or height) are quarantined.
    min_box_size: Fraction = 0.01
    # Images with fewer pixels per side are quarantined; larger ones are refused unread.
    min_image_side: PositiveInt = 16
    max_image_pixels: PositiveInt = 89_478_485  # Pillow's decompression-bomb limit


class DedupParams(Section):
    # Boxes of the same image and class with IoU above this are one object annotated twice.
    box_iou_threshold: Fraction = 0.95


class ModelParams(Section):
    backbone: Literal["mobilenet"] = "mobilenet"
    alpha: Literal[0.25, 0.5, 0.75, 1.0] = 0.5
    image_size: Annotated[int, Field(ge=32, le=512, multiple_of=32)] = 128
    # "none" trains from random init (offline default); "imagenet" needs Keras' download.
    weights: Literal["none", "imagenet"] = "none"
    dropout: Fraction = 0.3
    box_head_filters: PositiveInt = 512


class TrainParams(Section):
    seed: int = 42
    epochs: PositiveInt = 24
    batch_size: PositiveInt = 32
    learning_rate: Annotated[float, Field(gt=0, le=1)] = 3e-3
    # Epochs (1-based) at which the learning rate is divided by 10, as the book does.
    lr_drop_epochs: list[PositiveInt] = [16, 21]
    box_loss_weight: Annotated[float, Field(ge=0)] = 10.0
    # "image": one sample per image, target = its largest box of the folder class;
    # "rows": one sample per CSV row (the book's generator).
    target: Literal["image", "rows"] = "image"
    hflip: bool = True
    cache_images: bool = True
    workers: PositiveInt = 2
    # Share of training images; 1.0 uses all. Handy for quick experiments.
    subset: Annotated[float, Field(gt=0, le=1)] = 1.0


class EvaluateParams(Section):
    split: Literal["val", "test"] = "test"
    batch_size: PositiveInt = 64


class RegisterParams(Section):
    model_name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")] = "snackloc"


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

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _describe(error: dict) -> str:
    """One line per pydantic error: dotted key, message and the offending value."""
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"  {key}: unknown key (misspelled?)"
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
