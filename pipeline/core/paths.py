"""Where each stage writes its outputs (the DVC outs). Stages talk only through these files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

OUTPUTS_ROOT = Path("outputs")  # the default root of the output tree (dvc.yaml's outs)


@dataclass(frozen=True)
class Outputs:
    """The output tree of one pipeline, rooted at ``root`` (default ``outputs/``)."""

    root: Path = OUTPUTS_ROOT

    # validate
    @property
    def validate_dir(self) -> Path:
        return self.root / "validate"

    def validated(self, split: str) -> Path:
        return self.validate_dir / f"annotations-{split}.csv"

    @property
    def quarantine(self) -> Path:
        return self.validate_dir / "quarantine.csv"

    @property
    def classes(self) -> Path:
        return self.validate_dir / "classes.json"

    @property
    def validate_report(self) -> Path:
        return self.validate_dir / "report.json"

    @property
    def data_docs(self) -> Path:
        """The Great Expectations Data Docs site."""
        return self.validate_dir / "data_docs"

    @property
    def contact_sheets(self) -> Path:
        """The contact sheet PNGs, one per split and one of the quarantine."""
        return self.validate_dir / "contact_sheets"

    # dedup
    @property
    def dedup_dir(self) -> Path:
        return self.root / "dedup"

    def deduped(self, split: str) -> Path:
        return self.dedup_dir / f"annotations-{split}.csv"

    @property
    def duplicates(self) -> Path:
        return self.dedup_dir / "duplicates.csv"

    @property
    def dedup_report(self) -> Path:
        return self.dedup_dir / "report.json"

    @property
    def dedup_groups(self) -> Path:
        """Image groups with their hashes, box merges and leaks."""
        return self.dedup_dir / "groups.json"

    # train
    @property
    def train_dir(self) -> Path:
        return self.root / "train"

    @property
    def model(self) -> Path:
        return self.train_dir / "model.keras"

    @property
    def history(self) -> Path:
        return self.train_dir / "history.csv"

    @property
    def train_metrics(self) -> Path:
        return self.train_dir / "metrics.json"

    @property
    def mlflow_run(self) -> Path:
        return self.train_dir / "mlflow_run.json"

    @property
    def train_backup(self) -> Path:
        """The backup an interrupted training resumes from (not a DVC out)."""
        return self.train_dir / "backup"

    def train_worker_backup(self, rank: int) -> Path:
        """The backup of non-chief worker ``rank`` of a multi-worker training."""
        return self.train_dir / f"backup-worker{rank}"

    # evaluate
    @property
    def evaluate_dir(self) -> Path:
        return self.root / "evaluate"

    @property
    def eval_metrics(self) -> Path:
        return self.evaluate_dir / "metrics.json"

    @property
    def predictions(self) -> Path:
        return self.evaluate_dir / "predictions.csv"

    @property
    def plots_dir(self) -> Path:
        return self.evaluate_dir / "plots"

    @property
    def per_class(self) -> Path:
        return self.evaluate_dir / "per_class.csv"

    @property
    def eval_splits(self) -> Path:
        """Images and data fingerprint of each evaluated split (the gate compares them)."""
        return self.evaluate_dir / "splits.json"

    @property
    def eval_summary(self) -> Path:
        return self.evaluate_dir / "summary.md"

    # register
    @property
    def registry_record(self) -> Path:
        return self.root / "register" / "record.json"

    @property
    def registry_history(self) -> Path:
        """Every register / promote / rollback record, one JSON object a line (not a DVC out)."""
        return self.root / "register" / "history.jsonl"

    # review
    @property
    def review_dir(self) -> Path:
        return self.root / "review"

    @property
    def review_table(self) -> Path:
        """Every annotation row ranked by how likely it is wrong (most suspect first)."""
        return self.review_dir / "review.csv"

    @property
    def review_report(self) -> Path:
        return self.review_dir / "report.json"

    @property
    def review_gallery(self) -> Path:
        return self.review_dir / "gallery.png"
