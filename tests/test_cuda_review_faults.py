"""Review of the CUDA paths, made without a GPU: each test failed on the code before its fix
(fc4435b). CPU tricks used: torch.compile is forced onto dynamo's "eager" backend (the same tracing,
guards and recompile limit as inductor, without compiling kernels), and the batch-size probe is
told the device is a GPU (it only reads `device.type`).
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _load_bench(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def eager_compile(monkeypatch):
    """torch.compile with backend="eager": dynamo traces, guards and recompiles as it does for
    inductor, so recompile behaviour is the GPU's, at CPU cost."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    real = torch.compile

    def compile_eagerly(model=None, **options):
        options["backend"] = "eager"
        return real(model, **options)

    monkeypatch.setattr(torch, "compile", compile_eagerly)
    torch._dynamo.reset()
    counters.clear()
    yield counters
    torch._dynamo.reset()


# 1. --compile with --batch-size auto -------------------------------------------------------

def test_compile_with_auto_batch_size_still_runs_the_chosen_size_compiled(eager_compile, monkeypatch, tmp_path):
    """engines/local.py ShardWorker._load_model builds the Sampler with compile_model (Sampler
    wraps the UNet and vae.decode in torch.compile(dynamic=False)) BEFORE
    `_probe_batch_size` runs real pipeline calls at 1, 2, 4, ... 256 views (then bisects).
    With dynamic=False every probed size is a new graph; after torch._dynamo's recompile limit
    (8) dynamo gives up on the UNet and VAE frames and runs them eagerly for the rest of the
    process. On a GPU that is ~8 inductor compiles of the UNet and of the VAE decode (minutes
    each on SDXL) spent in the probe, and then the whole run at the chosen size is NOT
    compiled. The chosen batch size must run as a compiled graph (e.g. probe first, compile
    after; or probe on the uncompiled modules)."""
    from small_recipe import parse_small

    from synthgen.engines.local import GenerateOptions, ShardWorker
    from synthgen.generate import batching
    from synthgen.plan import make_plan

    class Gpu:  # auto_batch_size only reads device.type
        type = "cuda"

    probe_on_the_gpu = batching.auto_batch_size
    monkeypatch.setattr(batching, "auto_batch_size",
                        lambda try_batch, device, upper=256: probe_on_the_gpu(try_batch, Gpu(), upper))
    plan = make_plan(parse_small({}))
    worker = ShardWorker(plan, str(tmp_path / "out"), GenerateOptions(
        device="cpu", batch_size="auto", compile_model=True, progress=False))
    views = [view for group in plan.groups for view in group.views]
    worker.sampler.sample((views * (worker.batch_size // len(views) + 1))[:worker.batch_size])
    gave_up = [reason.splitlines()[0] for reason in eager_compile["unimplemented"]
               if "recompile" in reason.lower()]
    assert not gave_up, (f"batch size {worker.batch_size}: torch.compile gave up ({gave_up}); "
                         "the run's batches execute uncompiled")


# 2. bench/throughput.py: the timed run reloads the model ----------------------------------

def test_throughput_timed_run_excludes_model_loading(monkeypatch, tmp_path):
    """bench/throughput.py synthgen_path times `generate_dataset` after a warm-up run, and
    reports the warm-up as 'warmup_seconds_incl_load_and_compile'. But the timed run is a
    second generate_dataset call, which builds a new ShardWorker: it loads the pipeline from
    disk again, digests its weights, moves it to the GPU and wraps it in torch.compile again,
    all inside `summary.seconds`. On an H200 the measured run is ~10 s of generation (2048
    images), so a few seconds of reload understate images/s by tens of percent. Here a 6 s
    load is simulated (the 32 tiny images themselves take ~0.6 s); the timed figure should
    not contain it."""
    throughput = _load_bench("throughput")
    from synthgen.generate import prepare

    real_load = prepare.load_pipeline

    def slow_load(*args, **kwargs):
        time.sleep(6.0)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(prepare, "load_pipeline", slow_load)
    folder = throughput.build_model_folder("sd-turbo", tmp_path / "model", torch.device("cpu"), small=True)
    args = argparse.Namespace(steps=1, guidance=0.0, size=64, decoder="full", batch_size=8,
                              device="cpu", encode_workers=2, compile=False, channels_last=False,
                              images=32)
    result = throughput.synthgen_path(folder, args, tmp_path / "runs")
    assert result["seconds"] < 6.0, (
        f"the timed run took {result['seconds']} s for {result['images']} images, the 6 s "
        "model load included")


# 3. bench/audit_throughput.py: the GPU session's call could not finish ----------------------

def test_audit_benchmark_reuses_a_pool_of_pictures(tmp_path):
    """bench/gpu_session.sh gives bench/audit_throughput.py 90 s (120 before) for 20,000 views
    at 512 px; build_dataset made every view (resize, noise, JPEG encode: 6-14 ms on one
    thread) before any timing, ~200 s, so the session would get no audit figure. It now uses at
    most DISTINCT_PICTURES pictures in turn (9 s for the 20,000 here); the audit decodes and
    embeds each view whatever its bytes."""
    import hashlib
    import tarfile

    audit = _load_bench("audit_throughput")
    out = audit.build_dataset(tmp_path / "s64", audit.DISTINCT_PICTURES + 100, 64)
    digests = []
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tar:
            digests += [hashlib.sha256(tar.extractfile(m).read()).hexdigest()
                        for m in tar.getmembers() if m.name.endswith(".jpg")]
    assert len(digests) == audit.DISTINCT_PICTURES + 100
    assert len(set(digests)) == audit.DISTINCT_PICTURES


# 4. bench/gpu_session.sh: its timeouts exceeded the one 10-minute call it is meant for ------

def test_gpu_session_timeouts_fit_one_device_call():
    """gpu_session.sh is one 600 s device call; its timeouts allowed 5 x 150 s + 120 s = 870 s,
    so the last runs (the audit) would never start. They must add up to at most 540 s (a
    minute for the wheel install, nvidia-smi and start-up)."""
    script = (REPO / "bench" / "gpu_session.sh").read_text()
    runs = [int(seconds) for seconds in re.findall(r"^run \S+\s+(\d+) ", script, flags=re.M)]
    timeouts = [int(seconds) for seconds in re.findall(r"^timeout (\d+) ", script, flags=re.M)]
    assert len(runs) == 5 and len(timeouts) == 1, (runs, timeouts)
    assert sum(runs) + sum(timeouts) <= 540, f"worst case {sum(runs) + sum(timeouts)} s in a 600 s call"


# 5. --compile with slots.hold_layout ----------------------------------------------------------

def test_compile_with_hold_layout_does_not_exhaust_the_recompile_limit(eager_compile):
    """Sampler compiles the UNet (dynamic=False); hold_layout then runs each pipeline call
    inside attention_sharing.share_layout, whose _SharedMapsProcessor (inside the compiled
    UNet) branches on `self.state.sharing(part)`, i.e. `state.step < shared_steps[part]`, a
    Python int that changes every denoising step, and indexes with a fresh `state.rows`
    tensor made every step. Dynamo specialises on them, so each shared step is a new graph:
    at 12 steps (10 shared) the first batch already hits torch._dynamo's recompile limit and
    the UNet runs uncompiled from then on (at 20 steps, counterfactual-colours.yaml's, the
    same). On a GPU that is ~8 inductor compiles of the UNet (minutes each) spent on the first
    batch, then no compiled UNet for the run. Fix: decide what is shared once per step outside
    the graph (e.g. booleans set in the pre-hook, or swap processors when sharing ends) so
    at most a few graphs exist."""
    from small_recipe import parse_small

    from synthgen.generate.prepare import prepare_sampler
    from synthgen.plan import make_plan

    recipe = parse_small({"model": {"guidance_scale": 3.0, "steps": 12},
                          "views": {"count": 3, "strategy": "slots",
                                    "slots": {"vary": ["colour"], "hold_layout": True}},
                          "output": {"groups_per_shard": 2}})
    plan = make_plan(recipe)
    views = [view for group in plan.shard_groups(0) for view in group.views]
    sampler = prepare_sampler(recipe, torch.device("cpu"), torch.float32, len(views), compile_model=True)
    sampler.sample(views)
    gave_up = [reason.splitlines()[0] for reason in eager_compile["unimplemented"]
               if "recompile" in reason.lower()]
    assert not gave_up, (f"{eager_compile['stats']['unique_graphs']} graphs for one batch; "
                         f"torch.compile gave up ({gave_up})")


# 6. The trainer copied every batch out of pinned memory ----------------------------------------

def test_trainer_keeps_a_batch_without_repeats_as_the_loader_made_it():
    """train() indexed `batch.views[distinct]` at every step to drop a group drawn twice; on a
    batch with no repeat (the usual case) that is a full copy into ordinary memory, so the
    loader's pin_memory and the non_blocking copy to the GPU did nothing. Such a batch is used
    as it is now; a batch with a repeat keeps each group's first copy."""
    from types import SimpleNamespace

    from synthgen.train.trainer import distinct_groups

    views = torch.arange(3 * 2 * 3 * 4 * 4, dtype=torch.float32).reshape(3, 2, 3, 4, 4)
    labels = torch.tensor([0, 1, 2])
    kept_views, kept_labels = distinct_groups(SimpleNamespace(views=views, class_index=labels,
                                                              group_id=["a", "b", "c"]))
    assert kept_views is views and kept_labels is labels
    kept_views, kept_labels = distinct_groups(SimpleNamespace(views=views, class_index=labels,
                                                              group_id=["a", "b", "a"]))
    assert torch.equal(kept_views, views[:2]) and kept_labels.tolist() == [0, 1]
