"""Batched sampling: many groups' views in one pipeline call, each view's noise from its seed.

A view's starting noise is drawn on a CPU generator seeded with the view's seed (mixed with
its group's anchor noise for latent views), so it does not depend on the device, the batch it
lands in or its position there. Prompt embeddings are computed once per unique text (one text
at a time, so they do not depend on batching either). Views derived from an earlier view of
their group (img2img) are made after it; views a suppression detector flags are regenerated
from seeds derived from their own, so rejection is deterministic too. Views that hold their
group's layout (`ViewPlan.layout_anchor`) are made in one pipeline call with their anchor,
inside `attention_sharing.share_layout`, so a call holds whole groups.
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from itertools import groupby
from typing import Callable

import torch

from synthgen.errors import UserError
from synthgen.generate.families import family_of
from synthgen.generate.group_check import LAYOUT, GroupChecker, retry_group
from synthgen.generate.load import LoadedModel
from synthgen.generate.noise_turn import ColourLatents, turn_noise
from synthgen.generate.stored import StoredBatch, StoredForm
from synthgen.recipe import ModelSpec
from synthgen.seeding import derive_seed
from synthgen.views import ViewPlan
from synthgen.views.img2img import img2img_steps


@dataclass(frozen=True)
class SampledBatch:
    """Images as uint8 (N, H, W, 3) on the CPU, in the order of the views asked for."""

    images: torch.Tensor
    nonfinite: tuple[int, ...]  # positions whose model output had NaN/inf (stored as black)
    # Per view: what sampling did beyond the plan (e.g. rejections and the seed finally used),
    # merged into that view's entry in the sample's json. Empty dicts when nothing happened.
    records: tuple[dict, ...] = ()
    # Per view, its stored file where a detector judged it as stored (`stored.StoredBatch`),
    # so the writer stores those bytes instead of encoding the view again; else None.
    files: tuple[bytes | None, ...] = ()

    def record(self, position: int) -> dict:
        return self.records[position] if self.records else {}

    def file(self, position: int) -> bytes | None:
        return self.files[position] if self.files else None


def pixels_on_host(output: torch.Tensor, decoded_finite: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """A pipeline call's images (float (N, 3, H, W) in [0, 1], on its device) -> (uint8
    (N, H, W, 3) on the CPU, bool (N,) all-finite). Converted on the device, so only a quarter
    of the bytes cross to the host. `decoded_finite`: per view, whether the VAE's output was
    finite before clamping could hide an inf (`_decoded_finiteness`; empty where no hook saw
    the decode)."""
    finite = torch.isfinite(output).flatten(1).all(dim=1)
    if len(decoded_finite) == len(finite):
        finite &= decoded_finite.to(finite.device)
    # In float32 as diffusers converts: in bfloat16 or float16 the product is rounded to
    # the dtype first, and .round() then rounds a second time (hundreds of values a level off).
    pixels = (torch.nan_to_num(output.float(), nan=0.0, posinf=0.0, neginf=0.0) * 255).round()
    pixels[~finite] = 0  # a view with any non-finite value is stored black, not patched
    pixels = pixels.clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    return pixels.cpu(), finite.cpu()


@dataclass(frozen=True)
class Rejector:
    """One suppressed concept: `score` maps uint8 (N, H, W, 3) images, as their shard stores
    them (`stored.StoredBatch`), and the N prompts they were drawn from to probabilities (N,)."""

    concept: str
    threshold: float
    max_retries: int
    score: Callable[[torch.Tensor, list[str]], torch.Tensor]


def layout_anchors(views: list[ViewPlan]) -> list[int]:
    """Per view, the position in `views` of the view whose layout it holds: its group's view
    `layout_anchor`, or itself (no `layout_anchor`, or its anchor is not among `views`).

    >>> views = [ViewPlan("g", v, "p", "", 1, layout_anchor=0) for v in range(2)]
    >>> layout_anchors([ViewPlan("h", 0, "p", "", 1), *views])
    [0, 1, 1]
    """
    positions: dict[tuple[str, int], int] = {}
    for position, view in enumerate(views):
        positions.setdefault((view.group_id, view.view), position)
    return [position if view.layout_anchor is None
            else positions.get((view.group_id, view.layout_anchor), position)
            for position, view in enumerate(views)]


def retry_view(view: ViewPlan, attempt: int, shares_seed: bool = False) -> ViewPlan:
    """The view drawn again after a rejection: new seeds derived from the old, same prompt.

    A latent view also gets a new anchor: with a small sigma the anchor decides the picture,
    so keeping it would mostly redraw the rejected image. An `align_noise` view starts from
    its new seed unturned: the turn is defined on its group's shared noise, which it leaves.
    """
    anchor = view.anchor_seed
    if anchor is not None:
        anchor = derive_seed("retry-anchor", anchor, view.group_id, view.view, attempt)
    # A view sharing its group's seed (`shares_seed`: shared-noise strategies) mixes in its
    # group and place, or every redrawn view of the group would share one new noise again.
    seed = (derive_seed("retry", view.seed, view.group_id, view.view, attempt) if shares_seed
            else derive_seed("retry", view.seed, attempt))
    return replace(view, seed=seed, anchor_seed=anchor, noise_turn=None)


class Sampler:
    """Turns lists of `ViewPlan`s into images with one loaded pipeline.

    What depends on the kind of pipeline (prompt encoding and caching, who draws the starting
    latents) is its model family's (`generate/families/`), held as `family`.
    """

    def __init__(self, model: LoadedModel, spec: ModelSpec, batch_size: int,
                 rejectors: tuple[Rejector, ...] = (),
                 compile_model: bool = False, channels_last: bool = False,
                 group_checker: GroupChecker | None = None,
                 stored_form: StoredForm | None = None):
        self.model = model
        # How views are stored: the rejectors and the group checker judge that form. None:
        # they judge the sampler's pixels (tests' stub detectors); prepare_sampler gives one.
        self.stored_form = stored_form
        self.spec = spec
        self.batch_size = batch_size
        self.rejectors = rejectors
        self.group_checker = group_checker
        self.pipeline = model.pipeline
        self.family = family_of(self.pipeline, model.device)
        self._img2img = None
        self._colours: ColourLatents | None = None  # align_noise views: colour latents
        # Finished images later views of the same group start from, keyed (group id, view).
        self._sources: dict[tuple[str, int], torch.Tensor] = {}
        # The planned seed of each group's view 0 (the last group's only, as `_sources`): a
        # view with the same seed shares its group's noise, and is redrawn off it.
        self._first_seeds: dict[str, int] = {}
        denoiser_name = self.family.denoiser_name
        if channels_last:
            # Convolutions on tensor cores prefer NHWC; the weights follow the layout. A
            # transformer has no convolutions to speak of, so only its VAE changes.
            convolutional = [self.pipeline.vae] + ([self.pipeline.unet] if denoiser_name == "unet" else [])
            for module in convolutional:
                module.to(memory_format=torch.channels_last)
        if compile_model:
            self.compile()

    def compile(self) -> None:
        """Wrap the denoiser and the VAE decode in torch.compile. Every call has one shape
        (padded batches), so one compiled graph serves the run; so compile only once the batch
        size is fixed: a batch-size probe's calls at 1, 2, 4, ... views would each be a new
        graph, and past dynamo's recompile limit the run goes on uncompiled."""
        name = self.family.denoiser_name
        setattr(self.pipeline, name, torch.compile(getattr(self.pipeline, name), dynamic=False))
        self.pipeline.vae.decode = torch.compile(self.pipeline.vae.decode, dynamic=False)

    def accepts(self, argument: str) -> bool:
        """Whether the pipeline's ``__call__`` takes ``argument``."""
        return self.family.accepts(argument)

    @property
    def draws_own_latents(self) -> bool:
        """Whether synthgen draws the starting latents, as latent and img2img views need (the
        family's `draws_own_latents`)."""
        return self.family.draws_own_latents

    @torch.inference_mode()
    def sample(self, views: list[ViewPlan]) -> SampledBatch:
        """Generate one image per view (at most `batch_size` views); each depends only on its view.

        Views must come in plan order: a derived (img2img) view's source is an earlier view of
        its group, in this batch or the one before.

        Kernels pick their algorithms by tensor shape, and the pick changes the last float
        bits. So every call has a fixed shape, on every device: the batch is padded to
        `batch_size` (bytes then depend on the batch size, never on which views share a batch
        or on resume and worker layout). Another batch size gives the same pictures up to
        float rounding. On the CPU too: one view per call made the quickstart 3-4.5x slower
        than a plain batched pipeline call (bench/cpu_quickstart.py).
        """
        if not 0 < len(views) <= self.batch_size:
            raise ValueError(f"sample() takes 1 to {self.batch_size} views, got {len(views)}")
        present = {(view.group_id, view.view) for view in views}
        for view in views:
            if view.layout_anchor is not None and (view.group_id, view.layout_anchor) not in present:
                raise ValueError(f"view {view.view} of group {view.group_id} holds the layout of "
                                 f"view {view.layout_anchor}, which is not in this batch: pass "
                                 "whole groups (engines/local.py's shard_batches does)")
        pixels = [None] * len(views)
        finite = [None] * len(views)
        records: list[dict] = [{} for _ in views]
        files: list[bytes | None] = [None] * len(views)
        for view in views:
            if view.view == 0:
                self._first_seeds[view.group_id] = view.seed
        # 1. Text-to-image views first, then views derived from an earlier view of their group.
        whole = None  # (images, finite) when one pass made every view, in order
        for derived in (False, True):
            positions = [i for i, v in enumerate(views) if (v.source_view is not None) == derived]
            if not positions:
                continue
            images, ok, notes, stored = self._generate_checked([views[i] for i in positions])
            if len(positions) == len(views):
                whole = (images, ok)
            for slot, position in enumerate(positions):
                pixels[position], finite[position] = images[slot], ok[slot]
                records[position], files[position] = notes[slot], stored[slot]
                view = views[position]
                self._sources[(view.group_id, view.view)] = images[slot]
        # 2. Only the batch's last group can continue into the next batch; forget the rest.
        last_group = views[-1].group_id
        self._sources = {key: image for key, image in self._sources.items() if key[0] == last_group}
        self._first_seeds = {group: seed for group, seed in self._first_seeds.items()
                             if group == last_group}
        # A batch of one pass is already in view order: no second copy of its pixels.
        images_all, finite_all = whole if whole is not None else (torch.stack(pixels), torch.stack(finite))
        nonfinite = tuple(int(i) for i in torch.nonzero(~finite_all).flatten().tolist())
        return SampledBatch(images=images_all, nonfinite=nonfinite, records=tuple(records),
                            files=tuple(files))

    def _generate_checked(self, views: list[ViewPlan]):
        """Generate, redraw groups whose views disagree (`slots.check`), then regenerate views
        a rejector flags: (uint8 images, finite, records, stored files).

        Checked groups are redrawn whole (`_redraw_disagreeing_groups`) before any view is
        scored for rejection, so a rejected view's redraw is the last word on it; a checked
        group with a view rejection redrew is read once more (not redrawn), so its
        `held_check` is about the views it stores. A view is
        flagged when any concept's score exceeds its threshold; it is drawn again
        with `retry_view` until it passes or every concept that flags it has spent its own
        `max_retries` (the last draw is kept, and recorded as a suppression failure).
        A redrawn view is its own layout anchor (its group's anchor is not drawn again with
        it), recorded as `layout_anchor_used`; views held to an anchor that is redrawn keep
        the layout of the anchor's first draw. A redrawn `align_noise` view is not turned
        (`noise_turn_used: null`).
        """
        planned = list(views)
        images, finite = self._generate(views)
        records: list[dict] = [{} for _ in views]
        checking = any(view.held_check is not None for view in views)
        # The views as stored, encoded once when a detector first judges them: the writer
        # stores these files (`SampledBatch.files`).
        stored = StoredBatch(self.stored_form, images)
        if checking:
            views = self._redraw_disagreeing_groups(list(views), stored, finite, records)
        if not self.rejectors:
            return images, finite, records, stored.files()
        current = list(views)
        first_seeds = {**self._first_seeds,
                       **{view.group_id: view.seed for view in views if view.view == 0}}
        shares_seed = [view.view != 0 and view.seed == first_seeds.get(view.group_id)
                       for view in views]
        pending = list(range(len(views)))
        retries_allowed = {rejector.concept: rejector.max_retries for rejector in self.rejectors}
        attempt = 0
        while pending:
            flagged: dict[int, list[str]] = {}
            for rejector in self.rejectors:
                prompts = [current[position].prompt for position in pending]
                scores = rejector.score(stored.pixels(pending), prompts).tolist()
                for position, score in zip(pending, scores):
                    concepts = flagged.setdefault(position, []) if score > rejector.threshold else None
                    if concepts is not None and rejector.concept not in concepts:
                        concepts.append(rejector.concept)  # one count per concept and draw
            # A flagged view is drawn again while one of the concepts that flagged it has
            # retries left; otherwise its last draw is kept and recorded as a failure.
            pending = []
            for position, concepts in sorted(flagged.items()):
                spent = records[position].get("rejections", {})
                if any(spent.get(concept, 0) < retries_allowed[concept] for concept in concepts):
                    pending.append(position)
                else:
                    records[position]["suppression_failed"] = sorted(concepts)
            if not pending:
                break
            # Every view still pending has been drawn again equally often, so `attempt` is
            # each one's retry number (the seed chain of `retry_view`).
            attempt += 1
            for position in pending:
                counts = records[position].setdefault("rejections", {})
                for concept in flagged[position]:
                    counts[concept] = counts.get(concept, 0) + 1
                current[position] = retry_view(current[position], attempt, shares_seed[position])
            redrawn, redrawn_finite = self._generate([current[p] for p in pending],
                                                     own_anchors=True)
            stored.redrawn(pending, redrawn)
            finite[pending] = redrawn_finite
        for position, (plan, checked, final) in enumerate(zip(planned, views, current)):
            # The seeds finally used, whether a group check or a rejection changed them;
            # what only a rejection's redraw drops (anchor, turn), where it redrew.
            if final.seed != plan.seed:
                records[position]["seed_used"] = final.seed
                if final.anchor_seed is not None:
                    records[position]["anchor_seed_used"] = final.anchor_seed
            if final.seed != checked.seed:
                if plan.layout_anchor is not None and plan.layout_anchor != plan.view:
                    records[position]["layout_anchor_used"] = plan.view
                if plan.noise_turn is not None:
                    records[position]["noise_turn_used"] = None
        if checking:
            rejected = {view.group_id for view, final in zip(views, current)
                        if view.held_check is not None and final.seed != view.seed}
            if rejected:
                self._read_groups_again(current, rejected, stored, records)
        return images, finite, records, stored.files()

    def _read_groups_again(self, views: list[ViewPlan], group_ids: set[str],
                           stored: StoredBatch, records: list[dict]) -> None:
        """Read checked groups again whose views rejection redrew after their check: their
        `held_check` then says whether the stored views pass (no further redraws)."""
        for group_id in sorted(group_ids):
            positions = [p for p, view in enumerate(views) if view.group_id == group_id]
            disagree = self.group_checker.disagreements([views[p] for p in positions],
                                                        stored.pixels(positions))
            for position, problems in zip(positions, disagree):
                view = views[position]
                records[position]["held_check"].update(
                    passed=not any(disagree), disagree=self._disagreement_map(view, problems),
                    seed_used=view.seed)
                if view.anchor_seed is not None:
                    records[position]["held_check"]["anchor_seed_used"] = view.anchor_seed

    def _redraw_disagreeing_groups(self, views: list[ViewPlan], stored: StoredBatch,
                                   finite: torch.Tensor, records: list[dict]) -> list[ViewPlan]:
        """Check every group with `held_check` (whole in `views`: engines/local.py's batches
        keep them so) and draw the failing ones again whole (`group_check.retry_group`) until
        they pass or have spent `max_retries`; the images (through `stored.redrawn`) and
        `finite` are updated in place.
        Each checked view's record gets `held_check`: the group's redraws, whether its last
        draw passed, what disagreed there (per view) and the seed finally used. Returns the
        views as finally drawn."""
        if self.group_checker is None:
            raise ValueError("views with held_check need a Sampler made with a group_checker "
                             "(generate/prepare.py builds one from the recipe)")
        members: dict[str, list[int]] = {}
        for position, view in enumerate(views):
            if view.held_check is not None:
                members.setdefault(view.group_id, []).append(position)
        redraws = dict.fromkeys(members, 0)
        disagree: dict[str, list[list[str]]] = {}
        pending = list(members)
        attempt = 0
        while pending:
            failing = []
            for group_id in pending:
                positions = members[group_id]
                disagree[group_id] = self.group_checker.disagreements(
                    [views[p] for p in positions], stored.pixels(positions))
                limit = views[positions[0]].held_check.max_retries
                if any(disagree[group_id]) and redraws[group_id] < limit:
                    failing.append(group_id)
            if not failing:
                break
            # Every group still failing has been drawn equally often: `attempt` is its number.
            attempt += 1
            redrawn_positions = [p for group_id in failing for p in members[group_id]]
            for group_id in failing:
                redraws[group_id] += 1
                positions = members[group_id]
                for position, view in zip(positions, retry_group([views[p] for p in positions],
                                                                 attempt)):
                    views[position] = view
            redrawn, finite[redrawn_positions] = self._generate(
                [views[p] for p in redrawn_positions])
            stored.redrawn(redrawn_positions, redrawn)
            pending = failing
        for group_id, positions in members.items():
            passed = not any(disagree[group_id])
            for position, problems in zip(positions, disagree[group_id]):
                view = views[position]
                record = {"redraws": redraws[group_id], "passed": passed,
                          "disagree": self._disagreement_map(view, problems),
                          "seed_used": view.seed}
                if view.anchor_seed is not None:
                    record["anchor_seed_used"] = view.anchor_seed
                records[position]["held_check"] = record
        return views

    @staticmethod
    def _disagreement_map(view: ViewPlan, problems: list[str]) -> dict[str, bool]:
        """{name: disagreed} over every name the view's check reads (`layout` included where
        the check has one): the same keys in every view, where a list would be empty in the
        first samples and typed as a list of nulls by readers that infer types."""
        names = [name for name, _, _ in view.held_check.readings]
        if view.held_check.layout is not None:
            names.append(LAYOUT)
        return {name: name in problems for name in names}

    def _generate(self, views: list[ViewPlan], own_anchors: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """(uint8 (N, H, W, 3), bool (N,) all-finite) on the CPU, with fixed-shape calls.

        Views that hold a layout share it with their anchor in the same call; with
        `own_anchors` (rejection redraws) every view is its own anchor, a plain call.
        """
        images, finite, order = [], [], []
        # One call per batch-sized chunk (and per img2img strength and layout sharing), padded
        # to batch_size.
        chunks: dict[tuple, list[int]] = {}
        for position, view in enumerate(views):
            sharing = None if own_anchors or view.layout_anchor is None else tuple(
                view.layout_sharing.items())
            chunks.setdefault((view.strength, sharing), []).append(position)
        for (_, sharing), positions in chunks.items():
            for call in self._calls(views, positions, whole_groups=sharing is not None):
                part = [views[p] for p in call]
                padded = part + [part[-1]] * (self.batch_size - len(part))
                anchors = None
                if sharing is not None:
                    # Padding rows share with nothing: each is its own anchor.
                    anchors = layout_anchors(part) + list(range(len(part), len(padded)))
                pixels, ok = self._denoise(padded, anchors)
                images.append(pixels[:len(part)])
                finite.append(ok[:len(part)])
                order += call
        # Calls made in view order (the usual case) need no reordering copy; one call, no copy.
        if order == list(range(len(order))):
            if len(images) == 1:
                return images[0], finite[0]
            return torch.cat(images), torch.cat(finite)
        inverse = torch.argsort(torch.tensor(order))
        return torch.cat(images)[inverse], torch.cat(finite)[inverse]

    def _calls(self, views: list[ViewPlan], positions: list[int],
               whole_groups: bool) -> list[list[int]]:
        """`positions` cut into pipeline calls of at most `batch_size` views; with
        `whole_groups`, a call ends early rather than split a group (whose views are
        consecutive in plan order)."""
        if not whole_groups:
            return [positions[start:start + self.batch_size]
                    for start in range(0, len(positions), self.batch_size)]
        calls: list[list[int]] = [[]]
        for group_id, members in groupby(positions, key=lambda p: views[p].group_id):
            members = list(members)
            if len(members) > self.batch_size:
                raise ValueError(f"group {group_id} holds its layout in one pipeline call, and "
                                 f"its {len(members)} views do not fit the batch size "
                                 f"{self.batch_size}; use a batch size of at least the view "
                                 "count (engines/local.py rounds it to whole groups)")
            if len(calls[-1]) + len(members) > self.batch_size:
                calls.append([])
            calls[-1] += members
        return calls

    def _denoise(self, views: list[ViewPlan], anchors: list[int] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """One pipeline call: (uint8 (N, H, W, 3) on the CPU, bool (N,) all-finite).

        With `anchors` (view i's anchor is views[anchors[i]]), views take their anchor's
        layout for the fractions of the steps in their `layout_sharing`."""
        # 1. Conditioning and noise, per view, independent of the batch.
        self._check_family_draws(views)
        arguments = self.family.prompt_arguments(views, self.spec)
        # Stochastic schedulers (ancestral, SDE) draw fresh noise at every step. A latent
        # neighbourhood shares its anchor's step noise, so its views differ only by the
        # perturbation of the initial noise (sigma 0: identical views with any scheduler).
        generators = [torch.Generator("cpu").manual_seed(derive_seed(
            "steps", v.seed if v.anchor_seed is None else v.anchor_seed)) for v in views]
        steps = self.spec.steps
        if views[0].source_view is not None:
            pipeline = self._image_to_image()
            strength = views[0].strength
            steps, _ = img2img_steps(steps, strength)
            arguments.update(image=self._source_images(views), strength=strength,
                             generator=[torch.Generator("cpu").manual_seed(v.seed) for v in views])
        elif self.family.draws_own_latents:
            pipeline = self.pipeline
            arguments["latents"] = self._initial_noise(views)
            arguments["generator"] = generators
        else:
            # The pipeline draws the noise from per-view CPU generators, which diffusers'
            # randn_tensor draws one sample at a time.
            pipeline = self.pipeline
            arguments["generator"] = [torch.Generator("cpu").manual_seed(v.seed) for v in views]
        # 2. Denoise and decode on the device; views that hold a layout take their anchor's.
        with self._layout_shared(pipeline, views, anchors, steps), \
                _decoded_finiteness(pipeline) as decoded_finite:
            output = pipeline(
                num_inference_steps=steps, guidance_scale=self.spec.guidance_scale,
                height=self.spec.height, width=self.spec.width, output_type="pt", **arguments,
            ).images
        # 3. uint8 on the device, so only a quarter of the bytes cross to the host.
        return pixels_on_host(output, decoded_finite)

    def _layout_shared(self, pipeline, views: list[ViewPlan], anchors: list[int] | None,
                       steps: int):
        """The context the pipeline call runs in: `share_layout` where a view shares its
        anchor's layout, else nothing (a call whose views are all their own anchors is the
        plain pipeline)."""
        if anchors is None or all(anchor == row for row, anchor in enumerate(anchors)):
            return nullcontext()
        reason = self.family.layout_unsupported_reason()
        if reason:
            raise UserError(f"views.slots.hold_layout: {reason}")
        from synthgen.generate.attention_sharing import LayoutSharing, share_layout

        sharing = LayoutSharing(**views[0].layout_sharing)
        return share_layout(pipeline.unet, anchors, steps, sharing)

    def _check_family_draws(self, views: list[ViewPlan]) -> None:
        """Latent (anchor) and img2img (source) views need latents synthgen draws: refused with
        the family's reason where the pipeline draws its own (prepare.py checks the recipe
        before a model loads; this keeps a direct `Sampler` user from a silent seeds view)."""
        if self.family.draws_own_latents:
            return
        if any(view.noise_turn is not None for view in views):
            raise UserError("views.slots.align_noise: "
                            f"{self.family.aligned_noise_unsupported_reason()}")
        from synthgen.views import STRATEGIES

        for view in views:
            asked = ("latent" if view.anchor_seed is not None else
                     "img2img" if view.source_view is not None else None)
            reason = asked and self.family.view_unsupported_reason(STRATEGIES[asked])
            if reason:
                raise UserError(f"views.strategy {asked}: {reason}")

    def _initial_noise(self, views: list[ViewPlan]) -> torch.Tensor:
        shape = self.family.latent_shape(self.spec)

        def gaussian(seed: int) -> torch.Tensor:
            return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))

        noise = []
        for view in views:
            if view.noise_turn is not None:
                rotation = self._colour_latents().rotation(*view.noise_turn)
                noise.append(turn_noise(gaussian(view.seed), rotation))
            elif view.anchor_seed is None:
                noise.append(gaussian(view.seed))
            elif view.sigma == 0:
                noise.append(gaussian(view.anchor_seed))
            else:
                # Variance preserving: a unit Gaussian plus sigma times another, rescaled.
                mixed = gaussian(view.anchor_seed) + view.sigma * gaussian(view.seed)
                noise.append(mixed / math.sqrt(1.0 + view.sigma ** 2))
        # One host-to-device copy for the whole batch.
        return torch.cat(noise).to(self.model.device, self.model.dtype)

    def _colour_latents(self) -> ColourLatents:
        if self._colours is None:
            self._colours = ColourLatents(self.pipeline, min(self.spec.width, self.spec.height))
        return self._colours

    def _image_to_image(self):
        if self._img2img is None:
            from diffusers import AutoPipelineForImage2Image

            # Shares the loaded components (and any erase edit): no second copy of the weights.
            self._img2img = AutoPipelineForImage2Image.from_pipe(self.pipeline)
            self._img2img.set_progress_bar_config(disable=True)
        return self._img2img

    def _source_images(self, views: list[ViewPlan]) -> torch.Tensor:
        """The finished source views as float (N, 3, H, W) in [0, 1] on the device."""
        try:
            sources = [self._sources[(v.group_id, v.source_view)] for v in views]
        except KeyError as missing:
            raise RuntimeError(f"img2img source {missing} was not generated before its view; "
                               "views must be sampled in plan order") from None
        stacked = torch.stack(sources).permute(0, 3, 1, 2).float() / 255.0
        return stacked.to(self.model.device, self.model.dtype)


class _Finiteness(list):
    """Per decoded row, whether the VAE's output was finite (filled by `_decoded_finiteness`)."""

    def __len__(self) -> int:
        return sum(len(part) for part in self)

    def to(self, device) -> torch.Tensor:
        return torch.cat(list(self)).to(device)


@contextmanager
def _decoded_finiteness(pipeline):
    """Records whether each row the pipeline's VAE decodes is finite: postprocessing clamps
    to [0, 1], which turns inf into a plain white or black pixel the check after the call
    cannot see (NaN survives it)."""
    rows = _Finiteness()
    vae = getattr(pipeline, "vae", None)
    decode = getattr(vae, "decode", None)
    if decode is None:
        yield rows
        return

    def checked(*args, **kwargs):
        result = decode(*args, **kwargs)
        sample = result[0] if isinstance(result, tuple) else getattr(result, "sample", None)
        if isinstance(sample, torch.Tensor):
            rows.append(torch.isfinite(sample).flatten(1).all(dim=1).cpu())
        return result

    own = vae.__dict__.get("decode")  # a decode set on the instance (a hook) stays after
    vae.decode = checked
    try:
        yield rows
    finally:
        if own is None:
            del vae.decode  # the class's method again
        else:
            vae.decode = own
