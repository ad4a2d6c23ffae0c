"""Model loading: one code path for hub ids, local folders and the models synthgen ships.

`builtin:NAME` is only a name for a folder inside the package; it is loaded with the same
`AutoPipelineForText2Image.from_pretrained` call as a hub model. Weights load from
safetensors only (never pickles), and remote code runs only if the recipe turns it on.
"""

from __future__ import annotations

import contextlib

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

# EDITS_FILE is imported from here by generate/prepare.py.
from synthgen.builtin import (  # noqa: F401
    EDITS_FILE,
    PIPELINE,
    TINY_AUTOENCODER,
    check_model_reference,
    edit_record,
    refuse_foreign_components,
    resolve_model_source,
)
from synthgen.errors import UserError
from synthgen.generate.families import family_named_in_index
from synthgen.generate.identity import weights_digest
from synthgen.recipe import ModelSpec, check_scheduler_name

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def choose_dtype(requested: str, device: torch.device, spec: ModelSpec | None = None) -> torch.dtype:
    """`auto` is float32 on the CPU; on a GPU the model family's `gpu_dtype` (float16, or
    bfloat16 for FLUX), the family read from the model's model_index.json when `spec` is given."""
    check_dtype_fits_device(requested, device)
    if requested != "auto":
        return _DTYPES[requested]
    if device.type != "cuda":
        return torch.float32
    if spec is None:
        return torch.float16
    return family_named_in_index(pipeline_class_name(spec)).gpu_dtype


def check_dtype_fits_device(requested: str, device: torch.device) -> None:
    """float16 on the CPU is refused: PyTorch has few float16 CPU kernels, so the tiny test
    pipeline ran 2x slower than in float32, and diffusers warns that pipelines may fail."""
    if requested == "float16" and device.type == "cpu":
        raise UserError("model.dtype (or --dtype) float16 on the CPU: it is slower than float32 "
                        "there and may fail; use float32 or bfloat16 on the CPU, or float16 on a "
                        "GPU (--device cuda)")


def pipeline_class_name(spec: ModelSpec) -> str | None:
    """The pipeline class a model folder or hub id names, or None where it cannot be read
    (loading then reports the problem)."""
    from diffusers import DiffusionPipeline

    try:
        config = DiffusionPipeline.load_config(resolve_model_source(spec.id), revision=spec.revision)
    except (OSError, ValueError, EnvironmentError, UserError):
        return None
    return config.get("_class_name")


@dataclass(frozen=True)
class LoadedModel:
    """A pipeline on its device, with what a sample's metadata says about it."""

    pipeline: object
    device: torch.device
    dtype: torch.dtype
    source: str
    edits: tuple[dict, ...] = ()  # erase edits applied after loading (see generate/erase.py)
    weights: str | None = None  # the loaded weights' digest (generate/identity.py)
    detectors: str | None = None  # the recipe's CLIP detectors' digest, when it has any

    def describe(self) -> dict:
        description = {"pipeline": type(self.pipeline).__name__, "device_type": self.device.type,
                       "dtype": str(self.dtype).replace("torch.", "")}
        if self.weights is not None:
            description["weights"] = self.weights
        if self.detectors is not None:
            description["detectors"] = self.detectors
        if self.edits:
            description["edits"] = list(self.edits)
        return description


@contextlib.contextmanager
def loading_bars_off():
    """diffusers' and transformers' per-component loading bars off while loading (synthgen draws
    its own progress bar; they only add noise), and as they were afterwards: a notebook's own
    from_pretrained calls keep theirs."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    libraries = (diffusers_logging, transformers_logging)
    were_on = [library.is_progress_bar_enabled() for library in libraries]
    for library in libraries:
        library.disable_progress_bar()
    try:
        yield
    finally:
        for library, on in zip(libraries, were_on):
            if on:
                library.enable_progress_bar()


def load_pipeline(spec: ModelSpec, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    """Load the recipe's text-to-image pipeline onto `device`; failures become `UserError`s."""
    import diffusers
    from diffusers import AutoPipelineForText2Image

    check_model_reference(spec.id, "model.id", PIPELINE, spec.trust_remote_code)  # a folder's libraries too
    source = resolve_model_source(spec.id)
    scheduler = _scheduler(spec.scheduler) if spec.scheduler is not None else None
    if not spec.trust_remote_code and not Path(source).is_dir():
        _refuse_foreign_libraries(spec, source)
    try:
        with loading_bars_off(), warnings.catch_warnings():
            # diffusers 0.42 renames torch_dtype to dtype; older releases know only torch_dtype.
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            pipeline = AutoPipelineForText2Image.from_pretrained(
                source, revision=spec.revision, variant=spec.variant, torch_dtype=dtype,
                use_safetensors=True, trust_remote_code=spec.trust_remote_code,
            )
    except (OSError, ValueError, KeyError, AttributeError, ImportError, TypeError) as error:
        # KeyError: a model_index.json without the keys diffusers reads (another tool's file);
        # AttributeError, ImportError: a component class this diffusers lacks (saved by a newer
        # one); TypeError: an index whose entries are not [library, class] pairs.
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        revision = f" at revision {spec.revision}" if spec.revision else ""
        if Path(source).is_dir():
            fix = ("the folder must hold a diffusers pipeline saved with save_pretrained, with "
                   "safetensors weights")
        else:
            fix = ("if this machine has no network, download the model elsewhere (huggingface-cli "
                   "download ID --local-dir DIR) and set model.id to that folder; weights must be "
                   "safetensors")
        raise UserError(f"model.id: cannot load {spec.id!r}{revision} ({first_line.rstrip('.')}); "
                        f"{fix}") from None
    if scheduler is not None:
        compatible = {type(pipeline.scheduler), *pipeline.scheduler.compatibles}
        if "FlowMatch" not in type(pipeline.scheduler).__name__:
            # Consistency samplers made for these (noise-predicting) pipelines, which diffusers'
            # lists leave out (LCM-LoRA, TCD-LoRA).
            compatible |= {getattr(diffusers, name) for name in ("LCMScheduler", "TCDScheduler")
                           if hasattr(diffusers, name)}
        if scheduler not in compatible:
            # Swapped in anyway it failed at the first step (FlowMatchEulerDiscreteScheduler on
            # an SD pipeline: no init_noise_sigma), with diffusers' traceback.
            names = sorted(cls.__name__ for cls in compatible)
            raise UserError(f"model.scheduler: {spec.scheduler!r} does not work with this "
                            f"model's {type(pipeline.scheduler).__name__}; use one of "
                            + ", ".join(names) + ", or leave model.scheduler out")
        pipeline.scheduler = scheduler.from_config(pipeline.scheduler.config)
    if spec.decoder is not None:
        pipeline.vae = _tiny_decoder(spec.decoder, dtype)
    pipeline.set_progress_bar_config(disable=True)
    return LoadedModel(pipeline=pipeline.to(device), device=device, dtype=dtype, source=source,
                       edits=_recorded_edits(source), weights=weights_digest(spec))


def _refuse_foreign_libraries(spec: ModelSpec, source: str) -> None:
    """`builtin.refuse_foreign_components` on a hub model's model_index.json (a folder's was
    checked by `check_model_reference`; unreadable indexes are left to from_pretrained)."""
    from diffusers import DiffusionPipeline

    try:
        config = DiffusionPipeline.load_config(source, revision=spec.revision)
    except (OSError, ValueError, EnvironmentError):
        return
    refuse_foreign_components(config, spec.id)


def _recorded_edits(source: str) -> tuple[dict, ...]:
    """The erase edits a `synthgen edit` folder carries, so datasets made from it record them."""
    data = edit_record(source)
    return tuple({**edit, "applied_by": "synthgen edit", "base_model": data.get("base_model")}
                 for edit in data.get("edits", ()))


def _scheduler(name: str):
    import diffusers
    from diffusers import SchedulerMixin

    check_scheduler_name(name)
    scheduler = getattr(diffusers, name, None)
    if not (isinstance(scheduler, type) and issubclass(scheduler, SchedulerMixin)):
        raise UserError(f"model.scheduler: {name!r} is not a diffusers scheduler; leave "
                        "model.scheduler out for the model's own, or name one such as "
                        "EulerDiscreteScheduler")
    return scheduler


def _tiny_decoder(decoder_id: str, dtype: torch.dtype):
    from diffusers import AutoencoderTiny

    check_model_reference(decoder_id, "model.decoder", TINY_AUTOENCODER)
    source = resolve_model_source(decoder_id, "model.decoder")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            return AutoencoderTiny.from_pretrained(source, torch_dtype=dtype, use_safetensors=True)
    except (OSError, ValueError) as error:
        raise UserError(f"model.decoder: cannot load {decoder_id!r} as an AutoencoderTiny "
                        f"({str(error).strip().splitlines()[0]}); use e.g. madebyollin/taesd "
                        "downloaded to a folder") from None
