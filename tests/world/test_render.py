"""Behavioural tests for the procedural world: pixels, captions and labels must agree."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from synthgen.world import (
    BACKGROUNDS,
    COLOURS,
    HOLLOW_CENTRE_SHAPES,
    PLAIN_BACKGROUND_COLOURS,
    RELATIONS,
    SHAPES,
    SIZES,
    Scene,
    SceneObject,
    caption,
    describe_object,
    labels,
    logo_box,
    render,
    render_background,
    render_object_coverage,
    render_scene_from_seed,
    sample_scene,
    stripe_colour_for,
)


def colour_distance(pixels: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray:
    return np.abs(pixels.astype(np.int32) - np.array(rgb)).max(axis=-1)


def single_object_scenes(count: int, **overrides) -> list[Scene]:
    """Plain single-object scenes (no stripes, no logo) from consecutive seeds."""
    scenes = []
    for seed in range(count):
        scene = sample_scene(np.random.default_rng(seed), two_object_prob=0.0, striped_prob=0.0, logo_prob=0.0)
        scenes.append(dataclasses.replace(scene, **overrides) if overrides else scene)
    return scenes


@pytest.mark.parametrize("resolution", [32, 64])
def test_same_seed_gives_identical_bytes_and_different_seeds_differ(resolution):
    probs = dict(two_object_prob=0.5, striped_prob=0.5, logo_prob=0.5)
    images = []
    for seed in range(6):
        first, first_scene = render_scene_from_seed(seed, resolution, **probs)
        # Unrelated work in between must not leak into the next render.
        render_scene_from_seed(seed + 1000, resolution, **probs)
        second, second_scene = render_scene_from_seed(seed, resolution, **probs)
        assert first.dtype == np.uint8 and first.shape == (resolution, resolution, 3)
        assert first.tobytes() == second.tobytes()
        assert first_scene == second_scene
        images.append(first.tobytes())
    assert len(set(images)) == len(images)


def test_centre_pixel_has_exact_object_colour():
    checked = 0
    for scene in single_object_scenes(80):
        obj = scene.objects[0]
        if obj.shape in HOLLOW_CENTRE_SHAPES:
            continue
        image = render(scene, 32)
        centre_pixel = image[int(obj.y * 32), int(obj.x * 32)]
        assert colour_distance(centre_pixel, COLOURS[obj.colour]) == 0, (obj, centre_pixel)
        checked += 1
    assert checked > 50


def test_fully_covered_pixels_have_object_colour_for_every_shape():
    for shape in SHAPES:
        obj = SceneObject(shape, "purple", "medium", 0.5, 0.5, rotation_deg=17.0)
        scene = Scene((obj,), background="noise", background_seed=3)
        coverage = render_object_coverage(obj, 32)
        inside = render(scene, 32)[coverage == 1.0]
        assert len(inside) > 20, shape
        assert colour_distance(inside, COLOURS["purple"]).max() == 0, shape


def test_far_corner_matches_plain_background():
    for scene in single_object_scenes(40, background="beige"):
        obj = scene.objects[0]
        # The corner diagonally opposite the object is farthest from it.
        row = 31 if obj.y < 0.5 else 0
        column = 31 if obj.x < 0.5 else 0
        if (row, column) == (31, 31):
            row = 0  # stays clear of where a logo would go
        assert tuple(render(scene, 32)[row, column]) == PLAIN_BACKGROUND_COLOURS["beige"]


def test_background_is_untouched_outside_the_object():
    for scene in single_object_scenes(20):
        coverage = render_object_coverage(scene.objects[0], 32)
        outside = coverage == 0.0
        assert np.array_equal(render(scene, 32)[outside], render_background(scene, 32)[outside])


def test_objects_are_never_cut_off_by_the_frame():
    for seed in range(60):
        _, scene = render_scene_from_seed(seed, 32, two_object_prob=0.5)
        for obj in scene.objects:
            # A clipped object would lose area compared with the same object
            # moved to the middle; whole-pixel moves keep the rasterisation
            # identical, so any difference would be clipping.
            centred = dataclasses.replace(
                obj, x=obj.x + round((0.5 - obj.x) * 32) / 32, y=obj.y + round((0.5 - obj.y) * 32) / 32
            )
            area = render_object_coverage(obj, 32).sum()
            centred_area = render_object_coverage(centred, 32).sum()
            assert area == pytest.approx(centred_area, rel=0.01), obj


def test_larger_sizes_cover_more_pixels_of_their_colour_on_average():
    pixels_by_size: dict[str, list[int]] = {size: [] for size in SIZES}
    for scene in single_object_scenes(150, background="gray"):
        obj = scene.objects[0]
        close = colour_distance(render(scene, 32), COLOURS[obj.colour]) <= 30
        pixels_by_size[obj.size].append(int(close.sum()))
    means = [np.mean(pixels_by_size[size]) for size in ("small", "medium", "large")]
    assert means[0] * 1.5 < means[1] and means[1] * 1.5 < means[2], means


def test_striped_object_shows_object_and_stripe_colours_inside_its_mask():
    for colour in ("yellow", "blue"):
        obj = SceneObject("square", colour, "large", 0.5, 0.5, rotation_deg=5.0, striped=True)
        inside = render(Scene((obj,), background="gray"), 32)[render_object_coverage(obj, 32) == 1.0]
        body = colour_distance(inside, COLOURS[colour]) == 0
        stripes = colour_distance(inside, stripe_colour_for(colour)) == 0
        assert body.sum() > 20 and stripes.sum() > 20, colour
        plain = render(Scene((dataclasses.replace(obj, striped=False),), background="gray"), 32)
        assert colour_distance(plain[render_object_coverage(obj, 32) == 1.0], COLOURS[colour]).max() == 0


def test_logo_changes_only_its_corner():
    top, left, bottom, right = logo_box(32)
    assert bottom > 24 and right > 24, "the logo belongs in the bottom-right corner"
    for scene in single_object_scenes(10):
        without_logo = render(scene, 32)
        with_logo = render(dataclasses.replace(scene, logo=True), 32)
        in_box = np.zeros((32, 32), bool)
        in_box[top:bottom, left:right] = True
        assert not np.array_equal(with_logo[in_box], without_logo[in_box])
        assert np.array_equal(with_logo[~in_box], without_logo[~in_box])


def test_caption_names_every_attribute():
    rng = np.random.default_rng(0)
    for seed in range(100):
        _, scene = render_scene_from_seed(seed, 32, striped_prob=0.5, logo_prob=0.5)
        obj = scene.objects[0]
        for text in (caption(scene), caption(scene, rng)):
            for word in (obj.shape, obj.colour, obj.size, f"{scene.background} background"):
                assert word in text.split(" ") or word in text, (word, text)
            assert ("striped" in text) == obj.striped, text
            assert ("with a logo mark" in text) == scene.logo, text
    canonical = Scene((SceneObject("star", "red", "large", 0.5, 0.5, 0.0),), background="checkerboard")
    assert caption(canonical) == "a large red star on a checkerboard background"


def test_caption_wording_varies_only_with_rng():
    _, scene = render_scene_from_seed(1, 32, logo_prob=0.0)
    assert len({caption(scene) for _ in range(5)}) == 1
    rng = np.random.default_rng(0)
    assert len({caption(scene, rng) for _ in range(40)}) > 1


def test_two_object_captions_name_both_objects_and_the_relation():
    seen_relations = set()
    for seed in range(60):
        _, scene = render_scene_from_seed(seed, 32, two_object_prob=1.0)
        first, second = (describe_object(obj) for obj in scene.objects)
        seen_relations.add(scene.relation)
        for text in (caption(scene), caption(scene, np.random.default_rng(seed))):
            assert first in text and second in text, text
            assert f" {scene.relation} " in text, text
            if scene.relation == "inside":
                assert text.index(second) < text.index(" inside ") < text.index(first), text
    assert seen_relations == set(RELATIONS)


def test_inside_puts_a_visible_small_object_within_the_container():
    found = 0
    for seed in range(200):
        image, scene = render_scene_from_seed(seed, 64, two_object_prob=1.0, striped_prob=0.0, logo_prob=0.0)
        if scene.relation != "inside":
            continue
        outer, inner = scene.objects
        assert (outer.size, inner.size) == ("large", "small") and outer.colour != inner.colour
        outer_coverage = render_object_coverage(outer, 64)
        inner_coverage = render_object_coverage(inner, 64)
        if outer.shape == "ring":
            # Inside a ring means in its hole: no contact with the band.
            assert (outer_coverage * inner_coverage).max() == 0.0
        else:
            assert outer_coverage[inner_coverage > 0].min() == 1.0, outer.shape
        fully_inner = inner_coverage == 1.0
        assert colour_distance(image[fully_inner], COLOURS[inner.colour]).max() == 0
        found += 1
        if found == 15:
            break
    assert found == 15


def test_next_to_objects_do_not_overlap():
    found = 0
    for seed in range(100):
        _, scene = render_scene_from_seed(seed, 32, two_object_prob=1.0)
        if scene.relation != "next to":
            continue
        first, second = (render_object_coverage(obj, 32) for obj in scene.objects)
        assert (first * second).max() == 0.0
        found += 1
    assert found > 20


def test_sampling_reaches_the_whole_vocabulary():
    scenes = [sample_scene(np.random.default_rng(seed), two_object_prob=0.3) for seed in range(400)]
    objects = [obj for scene in scenes for obj in scene.objects]
    assert {obj.shape for obj in objects} == set(SHAPES)
    assert {obj.colour for obj in objects} == set(COLOURS)
    assert {obj.size for obj in objects} == set(SIZES)
    assert {scene.background for scene in scenes} == set(BACKGROUNDS)
    assert {scene.relation for scene in scenes} == {None, *RELATIONS}
    assert {obj.striped for obj in objects} == {True, False}
    assert {scene.logo for scene in scenes} == {True, False}
    assert len({round(obj.rotation_deg, 3) for obj in objects}) > 300
    assert len({(round(obj.x, 3), round(obj.y, 3)) for obj in objects}) > 300


def test_labels_are_json_and_match_the_scene():
    for seed in range(30):
        _, scene = render_scene_from_seed(seed, 32, two_object_prob=0.5, striped_prob=0.5, logo_prob=0.5)
        record = json.loads(json.dumps(labels(scene)))
        assert record["background"] == scene.background and record["logo"] == scene.logo
        assert record["relation"] == scene.relation and record["num_objects"] == len(scene.objects)
        for entry, obj in zip(record["objects"], scene.objects, strict=True):
            rebuilt = SceneObject(
                entry["shape"], entry["colour"], entry["size"],
                entry["x"], entry["y"], entry["rotation"], entry["striped"],
            )
            assert rebuilt == obj
        if len(scene.objects) == 1:
            assert record["shape"] == scene.objects[0].shape and record["colour"] == scene.objects[0].colour


def test_invalid_scenes_are_rejected():
    with pytest.raises(ValueError):
        SceneObject("blob", "red", "small", 0.5, 0.5, 0.0)
    with pytest.raises(ValueError):
        SceneObject("circle", "red", "large", 0.2, 0.5, 0.0)
    obj = SceneObject("circle", "red", "small", 0.5, 0.5, 0.0)
    with pytest.raises(ValueError):
        Scene((obj, obj), background="gray")
    with pytest.raises(ValueError):
        Scene((obj,), background="space")
