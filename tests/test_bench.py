"""The benchmark and figure scripts run end to end at a tiny scale on the CPU (a check, not a timing)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "throughput.py"


def test_throughput_benchmark_small(tmp_path):
    spec = importlib.util.spec_from_file_location("throughput", BENCH)
    throughput = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(throughput)
    result = throughput.main(["--small", "--device", "cpu", "--images", "32",
                              "--work", str(tmp_path)])
    assert result["synthgen"]["images"] == 32
    assert result["synthgen"]["images_per_second"] > 0
    assert result["plain_diffusers"]["one_per_call_images_per_second"] > 0
    assert set(result["stages"]) == {"unet", "decode", "encode", "write", "unit"}
    assert result["stages"]["unet"] > 0 and result["stages"]["decode"] > 0
    assert result["gflop_per_image"] > 0 and 0 < result["fraction_of_compute_limit"]
    assert (tmp_path / "runs" / "bench" / "manifest.json").is_file()


def test_world_training_steps_benchmark_small():
    spec = importlib.util.spec_from_file_location("world_training_steps", BENCH.parent / "world_training_steps.py")
    steps = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(steps)
    result = steps.main(["--threads", "1", "--steps", "1", "--warmup", "1", "--bf16"])
    assert set(result) == {"unet", "clip", "vae", "oracle"}
    assert all(timing["1_threads"] > 0 and timing["1_threads_bf16"] > 0 for timing in result.values())


def test_quickstart_oracle_figures_small(write_recipe, tmp_path):
    from synthgen.engines.local import GenerateOptions, generate_dataset
    from synthgen.plan import make_plan
    from synthgen.recipe import load_recipe

    recipe = write_recipe({"suppress": [{"concept": "striped", "method": "negative"}],
                           "corner_cases": [{"name": "striped circle", "prompt": "a striped {colour} circle",
                                             "label": "circle", "groups": 1}]})
    generate_dataset(make_plan(load_recipe(recipe)), tmp_path / "out",
                     GenerateOptions(progress=False, device="cpu"))
    spec = importlib.util.spec_from_file_location("quickstart_oracle", BENCH.parent / "quickstart_oracle.py")
    figures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(figures)
    result = figures.main([str(tmp_path / "out"), "--seed", "5"])
    dataset, resampled = result["dataset"], result["resampled"]
    assert dataset["views"] == 16 and dataset["unasked"] == 14, "8 groups of 2 views, one striped group"
    assert dataset["shape_prompted"] == 16 and dataset["colour_prompted"] == 16
    assert 0 <= dataset["unasked_striped"] <= 14 and 0 <= dataset["shape_as_prompted"] <= 16
    assert resampled["negative_prompt"] == "striped" and resampled["seeds"][0] == 5
    assert 1 <= resampled["prompts"] <= 7, "one prompt per unasked group at most (seed views share it)"
    assert all(0 <= resampled[key] <= resampled["prompts"]
               for key in ("striped_without_negative", "striped_with_negative"))


def test_cpu_quickstart_benchmark_small(write_recipe, tmp_path):
    from sampling_checks import dataset_bytes

    spec = importlib.util.spec_from_file_location("cpu_quickstart", BENCH.parent / "cpu_quickstart.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--recipe", str(write_recipe()), "--batch-size", "4", "--threads", "1",
                         "--work", str(tmp_path)])
    assert result["images"] == 18 and result["batch_size"] == 4 and result["threads"] == 1
    plain, synthgen = result["plain_diffusers"], result["synthgen"]
    assert plain["generation_s"] > 0 and synthgen["generation_s"] > 0 and synthgen["command_wall_s"] > 0
    assert result["synthgen_over_plain"] > 0
    # The timed command made what the timed in-process run made: the same options, the same bytes.
    assert dataset_bytes(tmp_path / "command") == dataset_bytes(tmp_path / "in-process")


def test_grown_world_unet_computes_what_it_grew_from_and_trains():
    """bench/world_colour_prior.py --cross-attention-16: the grown UNet starts as the shipped
    one (zeroed output projections), and `train_world_unet` continues it in its own layout."""
    import torch

    from synthgen.world.diffusion import DETAIL_PHASE, build_world_unet, train_world_unet

    spec = importlib.util.spec_from_file_location("world_colour_prior", BENCH.parent / "world_colour_prior.py")
    prior = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prior)
    torch.manual_seed(0)
    unet = build_world_unet(16).eval()
    grown = prior.with_cross_attention_16(unet).eval()
    assert grown.config.down_block_types[0] == "CrossAttnDownBlock2D"
    assert grown.config.up_block_types[-1] == "CrossAttnUpBlock2D"
    sample, context = torch.randn(2, 4, 16, 16), torch.randn(2, 8, 16)
    with torch.no_grad():
        before = unet(sample, torch.tensor([10, 900]), encoder_hidden_states=context).sample
        after = grown(sample, torch.tensor([10, 900]), encoder_hidden_states=context).sample
    assert torch.equal(before, after)
    settings = prior._scaled(DETAIL_PHASE, 2 / DETAIL_PHASE.steps)
    trained, stats = train_world_unet(torch.randn(8, 4, 16, 16), torch.zeros(8, dtype=torch.long),
                                      torch.randn(1, 8, 16), torch.randn(1, 8, 16), settings,
                                      torch.device("cpu"), seed=0, log=lambda message: None,
                                      small_objects=torch.zeros(8, dtype=torch.bool),
                                      initial_unet=grown)
    assert trained.config.down_block_types[0] == "CrossAttnDownBlock2D" and stats["steps"] == 2
    assert not any(key.startswith("_") for key in trained.config if key != "_use_default_values")
    moved = trained.down_blocks[0].attentions[0].proj_out.weight
    assert moved.abs().sum() > 0, "the added attention trains"


def test_host_overhead_benchmark_small(tmp_path):
    """bench/host_overhead.py replaces module attributes (the model compute) for its whole
    process, so it runs in its own."""
    import json
    import os
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, str(BENCH.parent / "host_overhead.py"), "--format", "png", "--size", "64",
         "--images", "16", "--batch-size", "8", "--groups-per-shard", "2", "--json",
         "--work", str(tmp_path)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["images"] == 16 and result["shards"] == 2
    stages = result["stages"]
    assert stages["S0 Sampler.sample total"]["calls"] == 2
    assert stages["E1 encode_image (PIL encode)"]["calls"] == 16
    assert result["host_cpu_ms_per_image (process CPU minus emulated device ops and model stages)"] > 0


def test_host_overhead_benchmark_with_a_detector_encodes_each_view_once(tmp_path):
    """With --reject every view is judged as stored on the sampler's side (S8), and the
    encode pool stores those files instead of encoding again (no E1 calls)."""
    import json
    import os
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, str(BENCH.parent / "host_overhead.py"), "--format", "jpg", "--size", "64",
         "--images", "16", "--batch-size", "8", "--groups-per-shard", "2", "--json", "--reject",
         "--work", str(tmp_path)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    stages = result["stages"]
    assert result["images"] == 16
    assert stages["S8 stored form for detectors (encode + decode)"]["calls"] == 2
    assert "E1 encode_image (PIL encode)" not in stages


def test_plan_arrangement_benchmark_small(capsys):
    spec = importlib.util.spec_from_file_location("plan_arrangement", BENCH.parent / "plan_arrangement.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--groups", "20"])
    lines = capsys.readouterr().out.splitlines()[1:]
    assert len(lines) == 2 * len(bench.cases(20))
    # The case revision 3 left repeats in: revision 4 arranges them away.
    three, four = [line for line in lines if line.startswith("3 slots x 2 values")]
    assert int(three.split()[-1]) > 0 and int(four.split()[-1]) == 0
