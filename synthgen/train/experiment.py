"""Real vs synthetic pretraining on the embedded world, measured by a linear probe on real renders.

    synthgen experiment --budget cpu --work runs/experiment

Conditions, each pretrained from scratch at an equal number of pretraining images
(`Budget.images`) and an equal number of steps of `Budget.batch_images` crops each:

| condition | pretraining data | objective |
| --- | --- | --- |
| real-simclr | `images` real renders (world train seeds) | SimCLR, 2 augmentations of one image |
| synthetic-single-simclr | `images` generated groups of 1 view | SimCLR, 2 augmentations of one image |
| synthetic-seeds-multipos | `images / views` groups of `views` views, `seeds` strategy | multi-positive over the views |
| synthetic-latent-sigma{sigma}-multipos | the same with `latent` views at each sigma | multi-positive over the views |
| synthetic-slots-seeds-multipos | the same with `slots` + `seeds` views: each re-draws `slots_vary` (distinct), holds the shape | multi-positive over the views |
| synthetic-slots-latent-sigma{slots_sigma}-multipos | the same views on a `latent` neighbourhood | multi-positive over the views |
| ...-nocolour | real-simclr, single, seeds and the two slots conditions without colour jitter and grayscale | as without |
| random-init | none | none |

Every condition uses the SimCLR augmentations (the `-nocolour` ones without their colour
part). The probe: frozen encoder, logistic regression on the features of the `images` real
train renders, top-1 on `real_test` held-out real renders (the world's evaluation seeds, never
trained on by anything here); label = the object's shape (11 classes). Each condition is run
with every seed in `Budget.seeds` (training seed; the random-init floor uses them as init
seeds); results are mean and standard deviation over them.

Synthetic data comes from `synthgen generate` (the engine API) with `Budget.model_id`:
`builtin:world-sd` for the real experiment, `builtin:tiny-random` for the smoke budget (noise
images: meaningless accuracies, but every stage runs). Datasets, checkpoints and results are
kept under the work directory and reused when the command is run again.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from synthgen.data import stable_seed
from synthgen.errors import UserError
from synthgen.store import write_atomically
from synthgen.train.encoders import EncoderSpec


@dataclass(frozen=True)
class Budget:
    name: str
    model_id: str
    sampling_steps: int
    guidance_scale: float
    images: int                 # pretraining images per condition
    views: int                  # views per group in the multi-view conditions
    sigmas: tuple[float, ...]   # latent-view perturbation scales
    real_test: int              # held-out real renders the probe is scored on
    steps: int                  # training steps per run
    batch_images: int           # crops per step (all conditions)
    encoder: EncoderSpec
    seeds: tuple[int, ...]
    lr: float = 2e-3
    temperature: float = 0.2
    # SimCLR's own crop scale; at 32 px its 0.08 lower bound often crops a world object away
    # entirely ("small" objects span 30% of the side), so the budgets below raise it.
    crop_scale: tuple[float, float] = (0.08, 1.0)
    # The `slots` conditions: the attributes each view re-draws (the shape, the probe's label,
    # is held) and the sigma of their latent neighbourhood.
    slots_vary: tuple[str, ...] = ("colour", "background", "size")
    slots_sigma: float = 0.5
    num_workers: int = 2
    groups_per_shard: int = 64
    # Views per pipeline call when generating (None: the device's default, 8 on a GPU). World
    # images are 32 px, so a GPU's default batch would be launch overhead, not compute.
    generate_batch_size: int | None = None


SMALL_RESNET = EncoderSpec(arch="resnet", width=8, blocks=(1, 1, 1, 1), resolution=32,
                           projection_dim=64)
BUDGETS = {
    # Seconds: exercises every stage on noise images.
    "smoke": Budget("smoke", "builtin:tiny-random", 2, 0.0, images=64, views=4, sigmas=(0.5,),
                    real_test=64, steps=4, batch_images=32, encoder=SMALL_RESNET, seeds=(0,),
                    num_workers=0, groups_per_shard=16),
    # 2 CPU cores, an estimated 1-1.5 h when the cores are free (see docs/EXPERIMENTS.md).
    # 400 steps with crops from 0.2 of the image left real-render SimCLR at the random
    # encoder's level (15.7% vs 15.5% top-1); 1,200 steps with crops from 0.5 (which keep the
    # object in view) reached 22.2% in a one-seed check, so the comparison can show something.
    "cpu": Budget("cpu", "builtin:world-sd", 10, 4.0, images=1536, views=4,
                  sigmas=(0.25, 0.5, 1.0), real_test=1000, steps=1200, batch_images=64,
                  encoder=SMALL_RESNET, seeds=(0, 1, 2), crop_scale=(0.5, 1.0)),
    # One GPU with 16 CPU cores, estimated 1-1.5 h (not run): ResNet-18 layout at width 32,
    # 20x the images. The loader is the limit: ~370 crops/s per worker at 32 px (measured on
    # the 2-core machine), so 14 workers feed ~10 steps/s of 512 crops: ~3.5 min per run.
    "gpu": Budget("gpu", "builtin:world-sd", 20, 4.0, images=30720, views=4,
                  sigmas=(0.25, 0.5, 1.0), real_test=5000, steps=2000, batch_images=512,
                  encoder=EncoderSpec(width=32, blocks=(2, 2, 2, 2), resolution=32),
                  seeds=(0, 1, 2), lr=3e-3, num_workers=14, groups_per_shard=512,
                  crop_scale=(0.2, 1.0), generate_batch_size=256),
}


@dataclass(frozen=True)
class Condition:
    name: str
    data: str            # "real", or the name of a synthetic dataset
    method: str
    views: int
    crops_per_view: int
    augment: str = "simclr"


def latent_dataset(sigma: float) -> str:
    """The dataset name of latent views at `sigma` (recipe names allow no dots): latent-s0p5."""
    return "latent-s" + f"{sigma:g}".replace(".", "p")


def slots_latent_dataset(sigma: float) -> str:
    """The dataset name of slot-varying views on a latent neighbourhood: slots-latent-s0p5."""
    return "slots-" + latent_dataset(sigma)


def conditions(budget: Budget) -> list[Condition]:
    found = [Condition("real-simclr", "real", "simclr", 1, 2),
             Condition("synthetic-single-simclr", "single", "simclr", 1, 2),
             Condition("synthetic-seeds-multipos", "seeds", "multipos", budget.views, 1)]
    found += [Condition(f"synthetic-latent-sigma{sigma:g}-multipos", latent_dataset(sigma),
                        "multipos", budget.views, 1) for sigma in budget.sigmas]
    slot_conditions = [
        ("synthetic-slots-seeds-multipos", "slots-seeds"),
        (f"synthetic-slots-latent-sigma{budget.slots_sigma:g}-multipos",
         slots_latent_dataset(budget.slots_sigma))]
    found += [Condition(name, data, "multipos", budget.views, 1) for name, data in slot_conditions]
    # Views that differ in colour already teach colour invariance; without the colour
    # augmentation too, is it the views or the jitter that does the work? The two slots
    # conditions, whose views differ in colour, run without it, and so do the controls whose
    # views do not (real renders, single views, seed views).
    without_colour = {"real-simclr", "synthetic-single-simclr", "synthetic-seeds-multipos",
                      *(name for name, _ in slot_conditions)}
    found += [Condition(f"{condition.name}-nocolour", condition.data, condition.method,
                        condition.views, condition.crops_per_view, "simclr-nocolour")
              for condition in found if condition.name in without_colour]
    return found


def synthetic_recipe(budget: Budget, name: str, views: int, strategy: str | list[str],
                     sigma: float = 0.5, vary: tuple[str, ...] = ()):
    """A recipe of the world's 11 shapes (class index = the shape's index in the world's SHAPES,
    as for real renders) in the canonical caption wording; `budget.images // views` groups.
    `vary` names the slots each view re-draws (for a strategy that includes `slots`)."""
    from synthgen.recipe import Recipe
    from synthgen.world.scene import BACKGROUNDS, COLOURS, SHAPES, SIZES

    groups = budget.images // views
    view_settings = {"count": views, "strategy": strategy, "latent": {"sigma": sigma}}
    if vary:
        view_settings["slots"] = {"vary": list(vary), "distinct": True}
    per_class = [groups // len(SHAPES) + (1 if i < groups % len(SHAPES) else 0)
                 for i in range(len(SHAPES))]
    return Recipe.model_validate({
        "name": f"experiment-{name}",
        "seed": 20260,
        "model": {"id": budget.model_id, "steps": budget.sampling_steps,
                  "guidance_scale": budget.guidance_scale, "width": 32, "height": 32},
        "templates": ["a {size} {stripes} {colour} {class} on a {background} background"],
        "slots": {"size": list(SIZES), "colour": list(COLOURS), "background": list(BACKGROUNDS),
                  # As often as the real renders are striped (30%).
                  "stripes": {"": 7, "striped": 3}},
        "classes": [{"name": shape, "groups": count} for shape, count in zip(SHAPES, per_class)],
        "views": view_settings,
        "output": {"groups_per_shard": budget.groups_per_shard, "format": "png"},
    })


def synthetic_datasets(budget: Budget) -> dict:
    """name -> recipe of every synthetic dataset the conditions read."""
    recipes = {"single": synthetic_recipe(budget, "single", 1, "seeds"),
               "seeds": synthetic_recipe(budget, "seeds", budget.views, "seeds")}
    for sigma in budget.sigmas:
        recipes[latent_dataset(sigma)] = synthetic_recipe(budget, latent_dataset(sigma),
                                                          budget.views, "latent", sigma)
    recipes["slots-seeds"] = synthetic_recipe(budget, "slots-seeds", budget.views,
                                              ["slots", "seeds"], vary=budget.slots_vary)
    slots_latent = slots_latent_dataset(budget.slots_sigma)
    recipes[slots_latent] = synthetic_recipe(budget, slots_latent, budget.views,
                                             ["slots", "latent"], budget.slots_sigma,
                                             vary=budget.slots_vary)
    return recipes


def prepare_data(budget: Budget, work: Path, device: str, log,
                 needed: set[str] | None = None) -> dict[str, Path]:
    """Write the real renders (always: the probe reads them) and generate the synthetic
    datasets in `needed` (default all), skipping finished ones."""
    from synthgen.engines.local import GenerateOptions, generate_dataset
    from synthgen.plan import make_plan
    from synthgen.world.dataset import write_real_dataset

    paths = {}
    real = work / "data" / "real"
    # Finished data is reused only if this budget made it: a work folder run before under
    # another budget holds datasets of other sizes, recipes or models.
    wanted = {"train": budget.images, "test": budget.real_test, "resolution": 32}
    if _json_or_none(real / "done.json") != wanted:
        started = time.perf_counter()
        (real / "done.json").unlink(missing_ok=True)
        counts = write_real_dataset(real, train=budget.images, test=budget.real_test, resolution=32)
        write_atomically(real / "done.json", json.dumps({**counts, "resolution": 32}).encode())
        log(f"real renders {counts} in {time.perf_counter() - started:.0f}s")
    paths["real"], paths["real-test"] = real / "train", real / "test"
    for name, recipe in synthetic_datasets(budget).items():
        if needed is not None and name not in needed:
            continue
        out = work / "data" / name
        manifest = _json_or_none(out / "manifest.json") or {}
        if manifest.get("recipe_hash") != recipe.recipe_hash:
            started = time.perf_counter()
            # A dataset of another recipe (another budget's) is replaced; a half-built one of
            # this recipe is resumed.
            recorded = _json_or_none(out / "recipe.json") or {}
            replace = recorded.get("recipe_hash") not in (None, recipe.recipe_hash)
            summary = generate_dataset(make_plan(recipe), out,
                                       GenerateOptions(device=device, progress=False,
                                                       overwrite=replace,
                                                       batch_size=budget.generate_batch_size))
            log(f"generated {name}: {summary.images_generated} images in "
                f"{time.perf_counter() - started:.0f}s")
        paths[name] = out
    return paths


def _json_or_none(path: Path):
    """The JSON in `path`, or None when it is missing or damaged (the data is then made again)."""
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None


def train_config(budget: Budget, condition: Condition, data: Path, seed: int):
    from synthgen.train.trainer import TrainOptions

    crops = condition.views * condition.crops_per_view
    return TrainOptions(data=str(data), method=condition.method, views=condition.views,
                       crops_per_view=condition.crops_per_view, augment=condition.augment,
                       batch_size=budget.batch_images // crops, steps=budget.steps, lr=budget.lr,
                       warmup_steps=max(1, budget.steps // 20), temperature=budget.temperature,
                       resolution=32, crop_scale=budget.crop_scale, encoder=budget.encoder, seed=seed,
                       num_workers=budget.num_workers, checkpoint_every=max(1, budget.steps // 4),
                       log_every=max(1, budget.steps // 10))


def summarise(accuracies: list[float]) -> dict:
    return {"mean": statistics.fmean(accuracies),
            "std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
            "runs": len(accuracies), "per_seed": accuracies}


def results_table(results: dict) -> str:
    lines = ["| condition | pretraining images | views/group | objective | top-1 (mean ± std) | runs | per seed |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, row in results.items():
        per_seed = ", ".join(f"{100 * a:.1f}" for a in row["per_seed"])
        lines.append(f"| {name} | {row['images']} | {row['views_per_group']} | {row['objective']} | "
                     f"{100 * row['mean']:.1f} ± {100 * row['std']:.1f} | {row['runs']} | {per_seed} |")
    return "\n".join(lines)


def run_folder(work: Path, condition: str, seed: int, config,
               made_by: dict | None = None) -> Path:
    """Where a run of `condition` at `seed` lives: named by the hash of its config (and of what
    made its data), so a changed budget never reuses an old run."""
    def folder(data: str) -> Path:
        keyed = {**config.to_json(), "data": data}
        if made_by is not None:
            keyed["data_made_by"] = made_by
        config_hash = stable_seed(json.dumps(keyed, sort_keys=True)) % 16 ** 8
        return work / "runs" / f"{condition}-seed{seed}-{config_hash:08x}"

    # The data by its place in the work folder, not by how --work was spelt.
    named = folder(os.path.relpath(config.data, work))
    # Before that (synthgen up to 2026-12-03) the path as built from --work was hashed: a run
    # finished then is reused, not trained again.
    earlier = folder(str(config.data))
    if not named.exists() and (earlier / "probe.json").is_file():
        return earlier
    return named


def run_experiment(budget: Budget, work: Path, device: str = "auto", log=print,
                   only: tuple[str, ...] | None = None) -> dict:
    """Run every condition (or those named in `only`, "random-init" included) for every seed;
    returns (and writes to work/results.json) the probe accuracies. Finished runs (a
    probe.json per run) are not repeated, so an interrupted experiment continues."""
    import torch

    from synthgen.train.probe import load_encoder, probe, random_encoder
    from synthgen.devices import choose_device
    from synthgen.train.trainer import train

    known = [c.name for c in conditions(budget)] + ["random-init"]
    unknown = sorted(set(only or ()) - set(known))
    if unknown:
        raise UserError(f"--conditions: unknown {', '.join(unknown)}; pick from {', '.join(known)}")
    selected = [c for c in conditions(budget) if only is None or c.name in only]
    work.mkdir(parents=True, exist_ok=True)
    torch_device = str(choose_device(device))
    # Small models on a few shared cores: 1 intra-op thread, the loader workers take the rest
    # (3x faster than 2 threads on the 2-core machine of docs/EXPERIMENTS.md).
    cpu_threads = 1 if torch_device == "cpu" else None
    if cpu_threads:
        torch.set_num_threads(cpu_threads)
    started = time.perf_counter()
    needed = {c.data for c in selected}
    paths = prepare_data(budget, work, "cpu" if torch_device == "cpu" else torch_device, log, needed)
    timings = {"data_seconds": round(time.perf_counter() - started, 1)}

    def probed(encoder) -> float:
        return probe(encoder, paths["real"], paths["real-test"], resolution=32,
                     device=torch_device).test_top1

    results = {}
    for condition in selected:
        accuracies = []
        for seed in budget.seeds:
            config = train_config(budget, condition, paths[condition.data], seed)
            # The config's hash in the name, with the recipe hash of its data (another --model
            # regenerates a dataset at the same path): a changed budget never reuses an old run.
            made_by = None if condition.data == "real" else {
                "model": budget.model_id,
                "recipe": (_json_or_none(paths[condition.data] / "manifest.json") or {}).get("recipe_hash")}
            run_dir = run_folder(work, condition.name, seed, config, made_by)
            done = run_dir / "probe.json"
            record = _json_or_none(done)
            if not (isinstance(record, dict) and isinstance(record.get("test_top1"), (int, float))
                    and "train_seconds" in record):  # not yet, or cut short: probed again
                run_started = time.perf_counter()
                train(config, run_dir, device=device, quiet=True, cpu_threads=cpu_threads)
                trained = time.perf_counter() - run_started
                encoder, _ = load_encoder(run_dir)
                record = {"test_top1": probed(encoder), "train_seconds": round(trained, 1)}
                write_atomically(done, json.dumps(record).encode())
            log(f"{condition.name} seed {seed}: top-1 {100 * record['test_top1']:.1f}% "
                f"(trained in {record['train_seconds']}s)")
            accuracies.append(record["test_top1"])
        crops = condition.views * condition.crops_per_view
        augment = "" if condition.augment == "simclr" else f", {condition.augment}"
        results[condition.name] = {**summarise(accuracies), "images": budget.images,
                                   "views_per_group": 1 if condition.data in ("real", "single")
                                   else budget.views,
                                   "objective": f"{condition.method} ({crops} crops/group{augment})"}
    if only is None or "random-init" in only:
        floor = [probed(random_encoder(budget.encoder, seed)) for seed in budget.seeds]
        for seed, accuracy in zip(budget.seeds, floor):
            log(f"random-init seed {seed}: top-1 {100 * accuracy:.1f}%")
        results["random-init"] = {**summarise(floor), "images": 0, "views_per_group": "-",
                                  "objective": "none"}
    timings["total_seconds"] = round(time.perf_counter() - started, 1)
    record = {"budget": {**asdict(budget), "encoder": budget.encoder.to_json()},
              "device": torch_device, "timings": timings, "results": results}
    write_atomically(work / "results.json", json.dumps(record, indent=2).encode())
    table = results_table(results)
    write_atomically(work / "results.md", (table + "\n").encode())
    log(table)
    return record
