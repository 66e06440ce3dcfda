"""What fixing the review's top suspects does to the test metrics, on synthetic data with
injected label noise.

One process, one training seed, three versions of the same images' labels:

- noisy: ``synth.label_noise`` (default 0.1) of the images carry one wrong but well-formed
  label (data/defects.json records each with its truth);
- fixed: the noisy labels after a review of the top N rows of the review stage's ranking
  (default N: twice the number of injected rows), by a reviewer who knows the truth: a
  suspect that is injected noise gets its true label back (class, box, or the deleted row
  of an object nobody boxed); every other suspect is kept as it is;
- clean: every injected label fixed (the same synth seed with ``label_noise: 0``, which is
  the pinned default dataset): the ceiling.

Each runs validate, dedup, train and evaluate with params.yaml's values (the noisy one also
review, with ``review.splits: [val, test]`` and its train folds). Every trained model is
then also scored against the clean labels of the test split, so the three stand on the
same truth; its own (noisy or fixed) test labels are in results.json too.

    python bench/review_fix.py                      # about 35 min on 2 CPU cores
    python bench/review_fix.py --epochs 10          # a quicker look
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipe_compare import ROOT, merge, parse_set, snackloc

from pipeline.core.files import read_json
from pipeline.data.contract import MANIFEST_NAME, SPLITS, annotations_path
from pipeline.data.synth.noise import EXPECT, undo
from pipeline.evaluation.review import found_in_top

ARMS = ("noisy", "fixed", "clean")
FIGURES = ("accuracy", "mean_iou", "iou50_rate", "corloc", "map50")


def arm_params(args: argparse.Namespace, folder: Path, noise: float) -> Path:
    """params.yaml for one arm: its data folder, the label noise, the seed (and --set)."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    data = {"root": str(folder / "data")}
    params = merge(params, {"data": data, "synth": {"label_noise": noise}})
    params["train"]["seed"] = args.seed
    if args.epochs:
        params["train"]["epochs"] = args.epochs
    params["mlflow"] = {"experiment": "bench-review-fix"}
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(merge(params, args.changes), sort_keys=False))
    return path


def stages(folder: Path, *names: str) -> None:
    """Run stages of the pipeline in ``folder`` (its params.yaml, its outputs/)."""
    for name in names:
        snackloc(name, "-q", "-p", str(folder / "params.yaml"), "--outputs",
                 str(folder / "outputs"), cwd=folder, log=folder / "stages.log")  # fmt: skip


def noise_entries(data: Path) -> list[dict]:
    """The manifest's injected label-noise entries (expect: review)."""
    return [e for e in read_json(data / MANIFEST_NAME)["defects"] if e.get("expect") == EXPECT]


def review_fix(ranked: pd.DataFrame, data: Path, top: int) -> tuple[Counter, Counter]:
    """Give the injected rows among the top ``top`` suspects their true labels, in place.

    Found as the review stage's recall counts them (``found_in_top``). Returns (injected,
    fixed) counts per noise kind."""
    tables = {
        split: pd.read_csv(annotations_path(data, split), dtype=str, keep_default_na=False)
        for split in SPLITS
    }
    entries = noise_entries(data)
    injected, fixed = Counter(), Counter()
    for entry, found in zip(entries, found_in_top(ranked, entries, top), strict=True):
        injected[entry["kind"]] += 1
        if found:
            undo(tables, entry)
            fixed[entry["kind"]] += 1
    for split, table in tables.items():
        table.to_csv(annotations_path(data, split), index=False)
    return injected, fixed


def on_truth(folder: Path, clean: Path) -> dict[str, float]:
    """The arm's trained model evaluated on the clean arm's validated, deduplicated labels."""
    truth = folder / "truth"
    shutil.rmtree(truth, ignore_errors=True)
    for stage in ("validate", "dedup"):
        shutil.copytree(clean / "outputs" / stage, truth / "outputs" / stage)
    shutil.copytree(folder / "outputs" / "train", truth / "outputs" / "train")
    shutil.copy(clean / "params.yaml", truth / "params.yaml")
    stages(truth, "evaluate")
    return read_json(truth / "outputs" / "evaluate" / "metrics.json")["test"]


def table(results: dict) -> str:
    """Markdown: the three arms on the clean test labels, and what the review found."""
    lines = ["| test split, clean labels | " + " | ".join(ARMS) + " |", "|---" * 4 + "|"]
    for figure in FIGURES:
        cells = " | ".join(f"{results[arm]['truth'][figure]:.3f}" for arm in ARMS)
        lines.append(f"| {figure} | {cells} |")
    injected, fixed = results["review"]["injected"], results["review"]["fixed"]
    lines += ["", f"review: top {results['review']['top']} suspects; fixed / injected per kind:"]
    lines += [f"- {kind}: {fixed.get(kind, 0)} / {n}" for kind, n in sorted(injected.items())]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=ROOT / ".snackloc" / "bench-review-fix")
    parser.add_argument("--noise", type=float, default=0.1, help="synth.label_noise")
    parser.add_argument("--top", type=int, default=0, help="default: twice the injected rows")
    parser.add_argument("--seed", type=int, default=42, help="train.seed of every arm")
    parser.add_argument("--epochs", type=int, default=None, help="default: params.yaml's")
    parser.add_argument("--set", dest="changes", action="append", default=[],
                        help="a param of every arm, e.g. review.folds=3")  # fmt: skip
    args = parser.parse_args()
    args.changes = parse_set(args.changes)
    work = args.workdir.resolve()
    shutil.rmtree(work, ignore_errors=True)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    folders = {arm: work / arm for arm in ARMS}
    for arm, folder in folders.items():
        folder.mkdir(parents=True)
        params = arm_params(args, folder, 0.0 if arm == "clean" else args.noise)
        if arm != "fixed":
            snackloc("data", "synth", "-q", "-p", str(params), "--out", str(folder / "data"),
                     cwd=folder, log=folder / "stages.log")  # fmt: skip
    results: dict = {}
    stages(folders["noisy"], "validate", "dedup", "train", "evaluate", "review")
    ranked = pd.read_csv(folders["noisy"] / "outputs" / "review" / "review.csv")
    shutil.copytree(folders["noisy"] / "data", folders["fixed"] / "data")
    top = args.top or 2 * len(noise_entries(folders["noisy"] / "data"))
    injected, fixed = review_fix(ranked, folders["fixed"] / "data", top)
    results["review"] = {"top": top, "injected": injected, "fixed": fixed}
    print(f"review: fixed {sum(fixed.values())} of {sum(injected.values())} injected rows "
          f"in the top {top}", flush=True)  # fmt: skip
    for arm in ("fixed", "clean"):
        stages(folders[arm], "validate", "dedup", "train", "evaluate")
    for arm, folder in folders.items():
        own = read_json(folder / "outputs" / "evaluate" / "metrics.json")["test"]
        truth = own if arm == "clean" else on_truth(folder, folders["clean"])
        train = read_json(folder / "outputs" / "train" / "metrics.json")
        results[arm] = {"own": own, "truth": truth, "train_seconds": train["train_seconds"]}
        (work / "results.json").write_text(json.dumps(results, indent=1, default=dict))
    text = table(results)
    (work / "results.md").write_text(text + "\n")
    print("\n" + text)


if __name__ == "__main__":
    main()
