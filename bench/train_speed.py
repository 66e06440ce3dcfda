"""Training speed: images/s, kernel share, page faults per step and the data-wait share.

For each recipe (the defaults from random init; the transfer recipe's fine-tuning phase on a
pretrained MobileNetV2) and each allocator (glibc as it comes, glibc tuned, tcmalloc), one
child process builds the model as the train stage does and measures, side by side:

- ``fit``: ``model.fit`` on the project's loader (decode cache, augmentation, worker
  threads), the path the train stage takes;
- ``fit, batches in memory``: the same ``fit`` on the same batches made beforehand, so
  the gap to ``fit`` is the time the step waited for data (the data-wait share);
- ``bare step``: ``train_on_batch`` on one batch, the model's own speed.

Each row reports images/s, the share of CPU time spent in the kernel, and minor page faults
per training step (a count that does not depend on the host's speed). Allocators are
chosen per child process (LD_PRELOAD), so every figure in one table comes from one run of
this script on one machine. On a machine with a CUDA GPU, ``--gpu-book`` also trains the
book's configuration (alpha 1.0, 224 px, mixed precision, XLA) and prints the same figures.

    python bench/train_speed.py                      # needs outputs/dedup (make run)
    python bench/train_speed.py --steps 30 --recipes default
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PRETRAINED = ROOT.parent / "shared" / "pretrained" / "mobilenet_v2_1.0_160_dogs.h5"
ALLOCATORS = ("glibc", "glibc tuned", "tcmalloc")
RECIPES = ("default", "transfer", "book-gpu")


def usage() -> tuple[float, float, int]:
    """CPU seconds in user space and in the kernel, and minor page faults, so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime, r.ru_minflt


def measure(step, steps: int, images: int) -> dict[str, float]:
    """Run ``step(steps)`` and report its speed and what it cost the kernel."""
    u0, s0, f0 = usage()
    t0 = time.perf_counter()
    step(steps)
    wall = time.perf_counter() - t0
    u1, s1, f1 = usage()
    cpu = (u1 - u0) + (s1 - s0)
    return {
        "images_per_s": images / wall,
        "wall_s": wall,
        "kernel_share": (s1 - s0) / cpu if cpu else 0.0,
        "faults_per_step": (f1 - f0) / steps,
    }


def child_params(recipe: str):
    """The params of ``recipe`` (params.yaml, changed only where the recipe says)."""
    from pipeline.core.config import load_params

    params = load_params(ROOT / "params.yaml")
    if recipe == "default":
        return params
    model = {"backbone": "mobilenet_v2", "alpha": 1.0}
    if recipe == "transfer":
        model |= {"image_size": 160, "weights": str(PRETRAINED)}
    else:  # the book's configuration on a GPU
        model |= {"image_size": 224}
    train = {"mixed_precision": "auto", "jit_compile": "auto"}
    data = params.model_dump(by_alias=True)
    data["model"] |= model
    data["train"] |= train
    return type(params).model_validate(data)


def run_child(recipe: str, steps: int) -> dict[str, dict[str, float]]:
    """In a child process: build the recipe's model, then measure the three paths."""
    import keras

    from pipeline.core.paths import Outputs
    from pipeline.core.startup import allocator, tune_glibc
    from pipeline.model import hardware
    from pipeline.model.callbacks import KeepFreedMemory
    from pipeline.model.fit import compile_phase, make_datasets
    from pipeline.model.model import build_model
    from pipeline.model.recipe import head_epochs, plan_phases, set_trainable
    from pipeline.stages.train import load_samples

    tuned = bool(os.environ.get("BENCH_TUNE_GLIBC"))
    if tuned:
        tune_glibc()
    # The train stage's own callback; left out for glibc "as it comes", which it would tune.
    keep = [KeepFreedMemory()] if tuned or allocator() == "tcmalloc" else []
    params = child_params(recipe)
    t = params.train
    setup = hardware.configure(t)
    classes, train_samples, val_samples = load_samples(params, Outputs(ROOT / "outputs"))
    train_ds, _ = make_datasets(params, train_samples, val_samples, progress=False)
    model = build_model(len(classes), params.model)
    phase = plan_phases(t.epochs, head_epochs(params))[-1]  # the longest phase
    set_trainable(model, phase, params)
    compile_phase(model, model, params, setup, t.ema_momentum)  # the train stage's compile
    steps = min(steps, len(train_ds) - 1)
    batch = t.batch_size
    in_memory = [train_ds[i] for i in range(steps)]

    class Ready(keras.utils.PyDataset):
        def __len__(self) -> int:
            return len(in_memory)

        def __getitem__(self, i: int):
            return in_memory[i]

    def fit_on(data):
        def go(n: int) -> None:
            model.fit(
                data, epochs=1, steps_per_epoch=n, verbose=0, shuffle=False,
                callbacks=keep,
            )  # fmt: skip

        return go

    x, y = in_memory[0]

    def bare(n: int) -> None:
        for _ in range(n):
            model.train_on_batch(x, y)

    fit_on(train_ds)(2)  # trace and warm the caches
    bare(2)
    results = {
        "fit": measure(fit_on(train_ds), steps, steps * batch),
        "fit, batches in memory": measure(fit_on(Ready()), steps, steps * batch),
        "bare step": measure(bare, steps, steps * batch),
    }
    results["fit"]["data_wait_share"] = max(
        0.0, 1 - results["fit, batches in memory"]["wall_s"] / results["fit"]["wall_s"]
    )
    results["allocator"] = allocator()  # type: ignore[assignment]
    results["gpus"] = setup.gpus  # type: ignore[assignment]
    return results


def loader_rate(recipe: str, batches: int) -> dict[str, float]:
    """Images/s of the training loader alone (decode cache, augmentation), one batch at a
    time in this process and with the train stage's worker threads: what it can feed."""
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.core.paths import Outputs
    from pipeline.stages.train import load_samples, make_datasets

    params = child_params(recipe)
    _, train_samples, val_samples = load_samples(params, Outputs(ROOT / "outputs"))
    train_ds, _ = make_datasets(params, train_samples, val_samples, progress=False)
    batches = min(batches, len(train_ds))
    rates = {"image_size": float(params.model.image_size)}
    for workers in (1, params.train.workers):
        started = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(train_ds.__getitem__, range(batches)))
        rates[f"{workers} thread(s)"] = (
            batches * params.train.batch_size / (time.perf_counter() - started)
        )
    return rates


def spawn(recipe: str, allocator: str, steps: int) -> dict:
    """Measure ``recipe`` with ``allocator`` in a fresh process; its JSON result."""
    from pipeline.core.startup import CHOICE, RESTARTED, tcmalloc_library

    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "BENCH_TUNE_GLIBC")}
    env[RESTARTED] = "1"  # the child is run as asked, not restarted
    env.pop(CHOICE, None)
    if allocator == "tcmalloc":
        library = tcmalloc_library()
        if library is None:
            return {"skipped": "no tcmalloc on this host (apt-get install libtcmalloc-minimal4)"}
        env["LD_PRELOAD"] = library
    elif allocator == "glibc tuned":
        env["BENCH_TUNE_GLIBC"] = "1"
    command = [sys.executable, __file__, "--child", recipe, "--steps", str(steps)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        return {"skipped": f"failed: {done.stderr.strip().splitlines()[-1:]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(recipe: str, runs: dict[str, dict]) -> str:
    """One markdown table: a row per allocator and path, ratios against glibc's fit."""
    lines = [
        f"\n### {recipe}\n",
        "| allocator | path | images/s | × glibc fit | kernel share | faults/step | data wait |",
        "|---|---|---|---|---|---|---|",
    ]
    base = runs.get("glibc", {}).get("fit", {}).get("images_per_s")
    for allocator, result in runs.items():
        if "skipped" in result:
            lines.append(f"| {allocator} | skipped: {result['skipped']} | | | | | |")
            continue
        for path in ("fit", "fit, batches in memory", "bare step"):
            row = result[path]
            ratio = f"{row['images_per_s'] / base:.2f}" if base else "—"
            wait = f"{row['data_wait_share']:.0%}" if "data_wait_share" in row else ""
            lines.append(
                f"| {allocator} | {path} | {row['images_per_s']:.1f} | {ratio} | "
                f"{row['kernel_share']:.0%} | {row['faults_per_step']:,.0f} | {wait} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="training steps per measure")
    parser.add_argument("--recipes", default="default,transfer", help=f"of {', '.join(RECIPES)}")
    parser.add_argument("--allocators", default=",".join(ALLOCATORS))
    parser.add_argument("--gpu-book", action="store_true", help="add the book's GPU recipe")
    parser.add_argument(
        "--loader", action="store_true",
        help="also the loader alone per recipe: the images/s it can feed a GPU",
    )  # fmt: skip
    parser.add_argument("--child", choices=RECIPES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(args.child, args.steps)))
        return
    if not (ROOT / "outputs/dedup/annotations-train.csv").exists():
        sys.exit("needs the dedup stage's outputs: run `make run` (or `dvc repro dedup`) first")
    if args.loader:
        print("\n### the loader alone (images/s it can feed a training step)\n")
        for recipe in [*args.recipes.split(","), "book-gpu"]:
            rates = loader_rate(recipe, 4 * args.steps)
            size = rates.pop("image_size")
            shown = ", ".join(f"{rate:.0f} with {name}" for name, rate in rates.items())
            print(f"- {recipe} ({size:.0f} px): {shown}", flush=True)
    recipes = args.recipes.split(",") + (["book-gpu"] if args.gpu_book else [])
    for recipe in recipes:
        if recipe == "transfer" and not PRETRAINED.exists():
            print(f"\n### transfer\n\nskipped: no pretrained file at {PRETRAINED}")
            continue
        runs = {a: spawn(recipe, a, args.steps) for a in args.allocators.split(",")}
        print(table(recipe, runs), flush=True)


if __name__ == "__main__":
    main()
