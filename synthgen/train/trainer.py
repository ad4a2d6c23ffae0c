"""The reference contrastive trainer: SimCLR, SupCon or multi-positive on synthgen shards.

One step = one batch of `batch_size` groups, each shown as `views` x `crops_per_view` crops,
through encoder + projection head into the method's loss (see `synthgen.train.losses`).
AdamW, linear warm-up then cosine decay to 0 over `steps`. On a GPU the forward pass runs under
torch.autocast (bfloat16 where supported, else float16 with a gradient scaler).

Deterministic on the CPU for a given config and `num_workers`: the data stream is a pure
function of (seed, epoch) (see `synthgen.data.pipeline`), the model is initialised from the
seed, and step s always reads batch s mod batches_per_epoch of epoch s div batches_per_epoch.
So a run resumed from its last checkpoint gives the same weights as one never interrupted.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from synthgen.data import group_loader, resolve_shards
from synthgen.devices import choose_device
from synthgen.errors import UserError
from synthgen.store import write_atomically
from synthgen.train.checkpoint import LAST, read_record, restore, save_checkpoint
from synthgen.train.encoders import ContrastiveModel, EncoderSpec
from synthgen.train.losses import group_embedding_loss
from synthgen.train.schedule import warmup_cosine

METHODS = ("simclr", "supcon", "multipos")
LOG = "log.jsonl"


@dataclass(frozen=True)
class TrainOptions:
    """Everything that decides what a training run computes (stored in every checkpoint)."""

    data: str
    method: str = "simclr"          # simclr | supcon | multipos
    views: int = 2                  # k views drawn per group each epoch
    crops_per_view: int = 1         # augmentations of each drawn view
    batch_size: int = 64            # groups per step
    steps: int = 1000
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 0
    temperature: float = 0.1
    resolution: int = 32
    augment: str = "simclr"
    crop_scale: tuple[float, float] = (0.08, 1.0)
    encoder: EncoderSpec = field(default_factory=EncoderSpec)
    seed: int = 0
    num_workers: int = 2
    epoch_groups: int | None = None  # groups per epoch; None: the dataset's size
    checkpoint_every: int = 100
    log_every: int = 10

    def to_json(self) -> dict:
        return {**asdict(self), "crop_scale": list(self.crop_scale), "encoder": self.encoder.to_json()}

    @classmethod
    def from_json(cls, record: dict) -> TrainOptions:
        return cls(**{**record, "crop_scale": tuple(record["crop_scale"]),
                      "encoder": EncoderSpec.from_json(record["encoder"])})

    def check(self) -> None:
        if self.method not in METHODS:
            raise UserError(f"method: unknown method {self.method!r}; use one of {', '.join(METHODS)}")
        crops = self.views * self.crops_per_view
        if self.method == "simclr" and crops != 2:
            raise UserError(f"views: simclr needs exactly 2 crops per group, got views={self.views} "
                            f"x crops_per_view={self.crops_per_view}; pass views=2, or views=1 "
                            "with crops_per_view=2 (two augmentations of one image)")
        if self.method in ("multipos", "supcon") and crops < 2:
            # SupCon with one crop has positives only where a batch holds two groups of one
            # class; a batch without any gives a loss over no anchors (NaN).
            raise UserError(f"views: {self.method} needs 2 or more crops per group, got {crops}; "
                            "pass views >= 2 or crops_per_view >= 2")
        for name in ("steps", "views", "crops_per_view", "checkpoint_every", "log_every"):
            _check_number(name, getattr(self, name), minimum=1, whole=True)
        # A batch's other groups are its negatives: with one group the loss is 0 and nothing learns.
        _check_number("batch_size", self.batch_size, minimum=2, whole=True,
                      hint="the other groups of a batch are each group's negatives")
        if not (isinstance(self.seed, int) and -2 ** 63 <= self.seed < 2 ** 64):
            raise UserError(f"seed: {self.seed!r} does not fit in 64 bits; pass a smaller whole number")
        _check_number("warmup_steps", self.warmup_steps, minimum=0, whole=True)
        if self.epoch_groups is not None:
            _check_number("epoch_groups", self.epoch_groups, minimum=1, whole=True,
                          hint="or leave it out for the dataset's size")
        # Zero or negative: a temperature divides the similarities (nan, or the objective
        # turned around); AdamW refuses a negative rate or decay only once it is built.
        _check_number("lr", self.lr, minimum=0.0, exclusive=True, hint="e.g. 1e-3")
        _check_number("temperature", self.temperature, minimum=0.0, exclusive=True, hint="e.g. 0.1")
        _check_number("weight_decay", self.weight_decay, minimum=0.0, hint="e.g. 1e-4")
        encoder = self.encoder
        for name in ("width", "resolution", "projection_dim") + (("patch", "depth", "heads")
                                                                 if encoder.arch == "vit" else ()):
            _check_number(name, getattr(encoder, name), minimum=1, whole=True)
        if self.resolution > MAX_TRAIN_RESOLUTION:
            raise UserError(f"resolution: {self.resolution} px is more than the {MAX_TRAIN_RESOLUTION} "
                            "px the reference trainer's small encoders take; pass e.g. 32 or 64")
        if encoder.arch == "vit" and encoder.width % encoder.heads:
            raise UserError(f"width: {encoder.width} is not divisible by the ViT's {encoder.heads} "
                            "attention heads; pass a multiple of it")
        if encoder.arch == "resnet" and (not encoder.blocks or min(encoder.blocks) < 1):
            raise UserError(f"blocks: {','.join(map(str, encoder.blocks)) or 'none'} must be one or "
                            "more whole numbers of at least 1, e.g. 2,2,2,2")


# The largest image side the trainer takes: its encoders are small, and a huge side was still
# resizing after a minute before running out of memory.
MAX_TRAIN_RESOLUTION = 1024


def _check_number(name: str, value, minimum: float, whole: bool = False, exclusive: bool = False,
                  hint: str = "") -> None:
    """A UserError naming the option unless `value` is a finite number >= `minimum` (> where
    `exclusive`), and a whole one where `whole`."""
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
          and (value > minimum if exclusive else value >= minimum)
          and (not whole or float(value).is_integer()))
    if not ok:
        bound = f"{'above' if exclusive else 'at least'} {minimum:g}"
        kind = "a whole number" if whole else "a number"
        raise UserError(f"{name}: {value!r} is not {kind} {bound}; pass {kind} {bound}"
                        + (f" ({hint})" if hint else ""))


@dataclass
class TrainResult:
    out_dir: Path
    steps: int
    final_loss: float
    checkpoint: Path


def data_fingerprint(data, batches_per_epoch: int) -> dict:
    """What a resumed run must find again: the shards by name, with their group counts and
    sha256 where the dataset records them, and the epoch length they give. A generation still
    running adds shards between a run and its resume; a regenerated dataset changes bytes."""
    source = resolve_shards(data)
    return {"shards": [url.rsplit("/", 1)[-1] for url in source.urls],
            "shard_samples": list(source.shard_samples) if source.shard_samples else None,
            "sha256": list(source.sha256) if source.sha256 else None,
            "batches_per_epoch": batches_per_epoch}


def _config_differences(recorded: dict, now: dict, prefix: str = "") -> list[str]:
    """"field: value in the checkpoint, value now (--option)" for each field that differs."""
    differences = []
    for name in sorted(set(recorded) | set(now)):
        old, new = recorded.get(name), now.get(name)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            differences += _config_differences(old, new, f"{prefix}{name}.")
            continue
        option = _OPTIONS.get(name, "--" + name.replace("_", "-"))
        differences.append(f"{prefix}{name} {json.dumps(old)} in the checkpoint, {json.dumps(new)} "
                           f"now ({option})")
    return differences


# Options a resumed run may change: they decide when it saves and logs, not what it computes.
_SCHEDULE_ONLY = ("checkpoint_every", "log_every")

# The command-line options whose names are not the field's (the rest are --field-name).
_OPTIONS = {"num_workers": "--workers", "data": "the DATA argument"}


def _data_difference(recorded: dict, now: dict) -> str:
    if recorded.get("shards") != now["shards"]:
        return f"{len(recorded.get('shards') or [])} shards then, {len(now['shards'])} now"
    differing = [key for key in now if recorded.get(key) != now[key]]
    return "their " + ", ".join(differing).replace("_", " ") + " differ"


def _resume_differences(recorded_config: dict, config: TrainOptions, recorded_data) -> list[str]:
    """How `config` differs from a checkpoint's in what the run computes.

    The data is compared by what it holds (its fingerprint, with the shards' sha256) where the
    checkpoint recorded that, not by how its path was spelt; shards without digests (another
    tool's) are told apart by where they are."""
    old_config, new_config = dict(recorded_config), config.to_json()
    for how_often in _SCHEDULE_ONLY:  # when to save and log changes nothing computed
        old_config.pop(how_often, None)
        new_config.pop(how_often)
    if isinstance(recorded_data, dict) and recorded_data.get("sha256") is not None:
        old_config.pop("data", None)
        new_config.pop("data")
    elif _same_place(old_config.get("data"), new_config["data"]):
        old_config["data"] = new_config["data"]
    return _config_differences(old_config, new_config)


def _same_place(recorded, given: str) -> bool:
    """Whether two spellings of a data path name the same local folder or file."""
    if not isinstance(recorded, str) or "://" in recorded or "://" in given:
        return recorded == given
    return os.path.realpath(recorded) == os.path.realpath(given)


def _keep_log_until(log: Path, step: int) -> float | None:
    """On resume, drop this trainer's log entries after the checkpoint's `step` (and a last
    line cut short by the kill): the steps after it are trained again, and each is logged
    once. Lines it did not write stay. Returns the loss logged at `step`, if one was."""
    if not log.is_file():
        return None
    lines, kept, logged = log.read_text(errors="replace").splitlines(), [], None
    for number, line in enumerate(lines):
        try:
            entry = json.loads(line)
        except ValueError:
            if number < len(lines) - 1:
                kept.append(line + "\n")
            continue
        ours = isinstance(entry, dict) and isinstance(entry.get("step"), int) and "loss" in entry
        if not ours or entry["step"] <= step:
            kept.append(line + "\n")
        if ours and entry["step"] == step and isinstance(entry["loss"], (int, float)):
            logged = float(entry["loss"])
    if len(kept) != len(lines):
        write_atomically(log, "".join(kept).encode())
    return logged


def first_of_each_group(group_ids: list[str]) -> torch.Tensor:
    """Batch rows of each group's first copy, in batch order."""
    seen: set[str] = set()
    rows = []
    for row, group_id in enumerate(group_ids):
        if group_id not in seen:
            seen.add(group_id)
            rows.append(row)
    return torch.tensor(rows, dtype=torch.long)


def distinct_groups(batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(views, class indices) of each group's first copy in `batch`. A batch without repeats
    (the usual case) is returned as the loader made it, not indexed: indexing copies it out of
    the pinned memory the loader put it in, and the copy to the GPU is then neither pinned nor
    asynchronous."""
    distinct = first_of_each_group(batch.group_id)
    if len(distinct) == len(batch.group_id):
        return batch.views, batch.class_index
    return batch.views[distinct], batch.class_index[distinct]


def train(config: TrainOptions, out_dir: Path, device: str = "auto", amp: bool = True,
          stop_after: int | None = None, quiet: bool = False,
          cpu_threads: int | None = None) -> TrainResult:
    """Train (or resume from `out_dir/checkpoint-last.safetensors`) up to `config.steps`.

    `stop_after` ends this call after that many steps (a time-boxed job or an interruption
    test); a later call resumes. A checkpoint is written every `checkpoint_every` steps and
    at the end; the loss goes to stdout and `out_dir/log.jsonl`. `cpu_threads` sets torch's
    intra-op threads (small models on a few shared cores run faster on 1 thread while the
    loader workers take the other cores; the thread count can move the last float bits).
    """
    config.check()
    if cpu_threads is not None:
        _check_number("threads", cpu_threads, minimum=1, whole=True)
    out_dir = Path(out_dir)
    from synthgen.outputs import check_output_folder

    check_output_folder(out_dir, "--out")
    data = Path(config.data)
    if "://" not in config.data and data.is_dir() and (
            out_dir.resolve() == data.resolve() or data.resolve() in out_dir.resolve().parents):
        # Checkpoints among the shards: a dataset folder holds its shards and records only.
        raise UserError(f"--out {out_dir}: is inside the dataset {data}; choose a folder of its "
                        "own, e.g. runs/my-run")
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path = out_dir / LAST

    # 1. Device and seed; autocast only where it pays (GPU).
    torch_device = choose_device(device)
    if cpu_threads is not None:
        torch.set_num_threads(cpu_threads)
    use_amp = amp and torch_device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    torch.manual_seed(config.seed)

    # 2. Data: a fixed number of batches per epoch, every batch a function of (seed, epoch).
    loader = group_loader(config.data, views=config.views, crops_per_view=config.crops_per_view,
                          batch_size=config.batch_size, resolution=config.resolution,
                          augment=config.augment, crop_scale=config.crop_scale, mode="train",
                          num_workers=config.num_workers, seed=config.seed,
                          epoch_groups=config.epoch_groups, pin_memory=torch_device.type == "cuda")
    batches_per_epoch = loader.batches_per_epoch
    data = data_fingerprint(config.data, batches_per_epoch)
    if data["shard_samples"] is not None and sum(data["shard_samples"]) < 2:
        raise UserError(f"{config.data}: holds {sum(data['shard_samples'])} group; contrastive "
                        "training needs 2 or more (the other groups of a batch are the negatives)")

    # 3. Model and optimiser, from the last checkpoint when there is one.
    model = ContrastiveModel(config.encoder).to(torch_device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    step = 0
    loss_value = float("nan")
    if checkpoint_path.is_file():
        record = read_record(checkpoint_path)
        recorded = record.get("data")
        differences = _resume_differences(record["config"], config, recorded)
        if differences:
            raise UserError(f"--out {out_dir}: holds a checkpoint of another training config ("
                            + "; ".join(differences) + "); pass the checkpoint's values to resume "
                            "it, or choose another --out")
        if recorded is not None and recorded != data:
            raise UserError(
                f"--out {out_dir}: its checkpoint was trained on other data than {config.data} "
                f"holds now ({_data_difference(recorded, data)}); a resumed run would not be "
                "the run it continues: train on the same shards, or choose another --out")
        record = restore(checkpoint_path, model, optimizer)
        step = record["step"]
        if record.get("scaler"):
            scaler.load_state_dict(record["scaler"])
        if not quiet:
            print(f"resuming from step {step} ({checkpoint_path})", flush=True)
        logged = _keep_log_until(out_dir / LOG, step)
        # Checkpoints saved before the record kept its loss: the log's entry at that step
        # (a finished run logs its last step) says what its final loss was.
        loss_value = record.get("loss", logged if logged is not None else loss_value)

    def checkpoint() -> None:
        save_checkpoint(checkpoint_path, model, optimizer,
                        {"step": step, "config": config.to_json(), "scaler": scaler.state_dict(),
                         "batches_per_epoch": batches_per_epoch, "data": data, "loss": loss_value})

    # 4. The loop.
    model.train()
    last_stop = config.steps if stop_after is None else min(config.steps, step + stop_after)
    started = time.perf_counter()
    with open(out_dir / LOG, "a") as log:
        while step < last_stop:
            epoch, skip = divmod(step, batches_per_epoch)
            batches = loader.epoch(epoch)
            for _ in range(skip):  # resumed mid-epoch: the batches already trained on
                next(batches)
            for batch in batches:
                # 4a. The step's learning rate.
                for group in optimizer.param_groups:
                    group["lr"] = warmup_cosine(step, config.steps, config.lr, config.warmup_steps)
                # 4b. Forward every crop of every group, loss over the groups' embeddings.
                #     Shards are drawn with replacement, so a batch can hold one group twice,
                #     with the same crops (seeded by group): one copy is kept, else the loss
                #     would push a group's crops away from themselves as negatives.
                views, labels = distinct_groups(batch)
                images = views.to(torch_device, non_blocking=True)
                groups, crops = images.shape[:2]
                with torch.autocast(torch_device.type, dtype=amp_dtype, enabled=use_amp):
                    embeddings = model(images.flatten(0, 1)).reshape(groups, crops, -1)
                loss = group_embedding_loss(config.method, embeddings.float(),
                                            labels, config.temperature)
                # 4c. Backward and update.
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                step += 1
                # 4d. Log and checkpoint.
                loss_value = loss.item()
                if step % config.log_every == 0 or step == last_stop:
                    elapsed = time.perf_counter() - started
                    entry = {"step": step, "epoch": epoch, "loss": loss_value,
                             "lr": optimizer.param_groups[0]["lr"], "seconds": round(elapsed, 3)}
                    log.write(json.dumps(entry) + "\n")
                    log.flush()
                    if not quiet:
                        print(f"step {step}/{config.steps} epoch {epoch} loss {loss_value:.4f} "
                              f"lr {entry['lr']:.2e} {elapsed:.0f}s", flush=True)
                if step % config.checkpoint_every == 0 and step < last_stop:
                    checkpoint()
                if step >= last_stop:
                    break

    # 5. The last checkpoint (what resume and the probe read).
    checkpoint()
    return TrainResult(out_dir, step, loss_value, checkpoint_path)
