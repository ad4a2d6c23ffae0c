"""Closed-form edits of every linear map through which the prompt reaches a UNet (UCE).

Unified Concept Editing (Gandikota et al., 2024; reference implementation
rohitgandikota/unified-concept-editing). A UNet reads the prompt's text embeddings only
through linear maps W, and which ones depends on the family:

- every family: the key and value projections of cross-attention, reading the token embeddings;
- `addition_embed_type: "text"` (builtin:world-sd): diffusers' `TextTimeEmbedding`, whose
  attention pooling reads the layer-normed tokens and a class token (their mean plus a learnt
  position embedding) through its key and value projections, and the class token alone
  through its query projection; the pooled result is added to the timestep embedding;
- `addition_embed_type: "text_time"` (SDXL): the pooled text embedding, through the first
  columns of `add_embedding.linear_1`.

An edit that misses one of them leaves the concept in the model (world-sd, "striped": editing
cross-attention alone still drew 35% of asked-for stripes, the pooled path alone 95%;
docs/WORLD.md). For each W the edit solves

    min_W'  sum_i |W' c_i - v_i|^2 + ps sum_p |W' c_p - W c_p|^2 + lam |W' - W|^2

with c_i what W reads for the edited text at token i, v_i what it should give instead (the
original output for the target text at the paired token: W c*_i), c_p what it reads for text
to preserve. The minimiser is

    W' = (lam W + sum_i v_i c_i^T + ps sum_p W c_p c_p^T) (lam I + sum_i c_i c_i^T + ps sum_p c_p c_p^T)^-1.

No training; seconds on a CPU. Everything is computed in float64 on the CPU and written back
in the layer's dtype.
"""

from __future__ import annotations

import hashlib
import random
import re
import string
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from synthgen.errors import UserError
from synthgen.generate.families import family_of
from synthgen.recipe import CLASS_SLOT, template_slots

# The reference's defaults: lamb 0.5 and erase scale 1 (train-scripts/train_erase.py and
# trainscripts/uce_sd_erase.py), preserve scale 1.0 (uce_sd_erase.py; train_erase.py used 0.1,
# which on world-sd let preserved plain captions move further: their cross-attention outputs
# shifted by 0.48 of the erased gap against 0.33 at 1.0, 40 contexts). lamb is absolute, as
# there; on world-sd 0.5 and 5 made nearly the same edit (0.47 and 0.44 of the gap left).
PRESERVE_WEIGHT = 1.0
REGULARIZER = 0.5
CONTEXT_SLOT = "concept"  # where a context template puts the concept (or the target)


@dataclass(frozen=True)
class Encoded:
    """One prompt as the UNet reads it: token ids, token embeddings, pooled embedding."""

    ids: tuple[int, ...]          # BOS, the prompt's tokens, EOS; no padding
    tokens: torch.Tensor          # (length, d) float64, padding included: cross-attention's input
    pooled: torch.Tensor | None   # (p,) float64 pooled embedding (SDXL), else None
    text: str = ""                # the prompt, for messages
    truncated: bool = False       # longer than the tokenizer's max length: its end was cut


@torch.no_grad()
def encode_all(pipeline, texts: Sequence[str], batch_size: int = 64) -> list[Encoded]:
    """`texts` through the pipeline's own `encode_prompt`, as sampling encodes them (its model
    family's `text_embeddings`), in batches (one text at a time cost 46 ms each on world-sd,
    most of an erase with 1,000 contexts)."""
    device = pipeline.unet.device
    family = family_of(pipeline, device)
    tokenizer = pipeline.tokenizer
    encoded = []
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start:start + batch_size])
        embeds, pooled = family.text_embeddings(chunk)
        if pooled is not None:
            pooled = pooled.double().cpu()
        ids = tokenizer(chunk, truncation=True, max_length=tokenizer.model_max_length).input_ids
        cut = [len(full) > tokenizer.model_max_length for full in tokenizer(chunk).input_ids]
        encoded += [Encoded(ids=tuple(ids[i]), tokens=embeds[i].double().cpu(),
                            pooled=None if pooled is None else pooled[i], text=chunk[i],
                            truncated=cut[i]) for i in range(len(chunk))]
    return encoded


def encode(pipeline, text: str) -> Encoded:
    """One text through `encode_all`."""
    return encode_all(pipeline, [text])[0]


def token_pairs(concept_ids: Sequence[int], target_ids: Sequence[int],
                length: int) -> list[tuple[int, int]]:
    """(concept position, target position) of every token the edit maps, as the reference pairs them.

    The reference (train-scripts/train_erase.py) pairs the concept's last word token with the
    target's last word token and each later token with the target's token at the same offset:
    end token with end token, padding with padding, up to `length` (the model attends to
    padding too). An empty target's "last word" is its start token. Where the two texts open
    with the same tokens (a concept written inside a context prompt), pairing starts at the
    first token that differs, so every concept token that carries the difference is mapped;
    the reference's concepts stand alone, where this is the same pairing.
    """
    last_concept, last_target = len(concept_ids) - 2, len(target_ids) - 2
    shared = 0
    while (shared < min(len(concept_ids), len(target_ids))
           and concept_ids[shared] == target_ids[shared]):
        shared += 1
    first = min(0, max(shared - last_concept, -last_target))
    stop = length - max(last_concept, last_target)
    return [(last_concept + offset, last_target + offset) for offset in range(first, stop)]


@dataclass(frozen=True)
class TextReader:
    """Linear maps that read one view of the prompt, and how to compute that view.

    `rows(encoded, positions)` gives the input rows the maps read for a prompt: at the given
    token positions (all when None), after any rows that summarise the whole prompt (a class
    token, a pooled embedding), which every edit pairs whatever the positions.
    """

    path: str
    linears: tuple[tuple[str, torch.nn.Linear], ...]
    rows: Callable[[Encoded, Sequence[int] | None], torch.Tensor]
    columns: int | None = None  # only the first `columns` inputs read text (SDXL add_embedding)
    summary_rows: int = 0       # how many of `rows`' first rows summarise the whole prompt

    def mapping_rows(self, encoded: Encoded, positions: Sequence[int] | None,
                     summary: bool) -> torch.Tensor:
        """`rows`, without the summary rows where a mapping leaves them to another (`summary`)."""
        found = self.rows(encoded, positions)
        return found if summary else found[self.summary_rows:]


def cross_attention_projections(unet) -> list[tuple[str, torch.nn.Linear]]:
    """Every key and value projection that reads the text, in module order."""
    projections = []
    for name, module in unet.named_modules():
        if getattr(module, "is_cross_attention", False):
            projections += [(f"{name}.to_k", module.to_k), (f"{name}.to_v", module.to_v)]
    return projections


def _token_rows(encoded: Encoded, positions: Sequence[int] | None) -> torch.Tensor:
    return encoded.tokens if positions is None else encoded.tokens[list(positions)]


def _pooling_readers(unet) -> list[TextReader]:
    """TextTimeEmbedding (addition_embed_type "text"): layer norm, then attention pooling whose
    query is the tokens' mean plus a position embedding (diffusers' AttentionPooling)."""
    embedding = unet.add_embedding
    norm, pool = embedding.norm1, embedding.pool

    def normed_and_class(encoded: Encoded) -> tuple[torch.Tensor, torch.Tensor]:
        normed = torch.nn.functional.layer_norm(
            encoded.tokens, norm.normalized_shape, norm.weight.detach().double().cpu(),
            norm.bias.detach().double().cpu(), norm.eps)
        class_token = normed.mean(dim=0, keepdim=True) + pool.positional_embedding.detach().double().cpu()
        return normed, class_token

    def key_value_rows(encoded: Encoded, positions: Sequence[int] | None) -> torch.Tensor:
        normed, class_token = normed_and_class(encoded)
        picked = normed if positions is None else normed[list(positions)]
        return torch.cat([class_token, picked])

    def query_rows(encoded: Encoded, positions: Sequence[int] | None) -> torch.Tensor:
        return normed_and_class(encoded)[1]

    return [TextReader("pooled text (keys, values)", (("add_embedding.pool.k_proj", pool.k_proj),
                                                      ("add_embedding.pool.v_proj", pool.v_proj)),
                       key_value_rows, summary_rows=1),
            TextReader("pooled text (query)", (("add_embedding.pool.q_proj", pool.q_proj),), query_rows,
                       summary_rows=1)]


def _pooled_embedding_rows(encoded: Encoded, positions: Sequence[int] | None) -> torch.Tensor:
    return encoded.pooled[None]


def unsupported_reason(pipeline) -> str | None:
    """Why the edit cannot reach every path from text to this pipeline's denoiser, or None.

    The pipeline's model family answers (`ModelFamily.edit_unsupported_reason`, which for a
    UNet asks `text_paths_unsupported_reason`)."""
    return family_of(pipeline).edit_unsupported_reason()


def text_paths_unsupported_reason(pipeline, supplies_pooled_text: bool) -> str | None:
    """Why the edit cannot reach every path from text to the pipeline's denoiser, or None.

    It edits a UNet's cross-attention, its `addition_embed_type` "text" pooling and, where the
    pipeline supplies a pooled text embedding (`supplies_pooled_text`: SDXL's family), the
    "text_time" one (`text_readers`); a transformer, or any other path, is refused."""
    unet = getattr(pipeline, "unet", None)
    name = type(pipeline).__name__
    if unet is None:
        return (f"{name} denoises with a transformer (PixArt, SD3, FLUX), not a UNet, and erase "
                "edits only a UNet's text paths")
    if getattr(unet, "encoder_hid_proj", None) is not None:
        return (f"{name}'s UNet projects the text (encoder_hid_dim_type "
                f"{unet.config.encoder_hid_dim_type!r}) before cross-attention, a path erase "
                "does not edit")
    if any(getattr(module, "add_k_proj", None) is not None for module in unet.modules()):
        return (f"{name}'s UNet has attention with added key/value projections of the text "
                "(as UnCLIP and DeepFloyd IF), a path erase does not edit")
    kind = unet.config.addition_embed_type
    if kind == "text_time" and not supplies_pooled_text:
        return (f"{name}'s UNet reads a pooled text embedding (addition_embed_type text_time) "
                "that only an SDXL pipeline supplies")
    if kind not in (None, "text", "text_time"):
        return (f"{name}'s UNet adds {kind!r} embeddings (image or hint conditioning) to the "
                "timestep, a path erase does not edit")
    return None


def text_readers(pipeline) -> list[TextReader]:
    """Every linear map through which `pipeline`'s prompt reaches its UNet (see the module doc).

    Raises ValueError (with `unsupported_reason`) for a pipeline with a path it cannot edit.
    """
    reason = unsupported_reason(pipeline)
    if reason is not None:
        raise ValueError(reason)
    unet = pipeline.unet
    readers = [TextReader("cross-attention", tuple(cross_attention_projections(unet)), _token_rows)]
    if unet.config.addition_embed_type == "text":
        readers += _pooling_readers(unet)
    elif unet.config.addition_embed_type == "text_time":
        pooled_size = family_of(pipeline).pooled_text_size()
        readers.append(TextReader("pooled text embedding",
                                  (("add_embedding.linear_1", unet.add_embedding.linear_1),),
                                  _pooled_embedding_rows, columns=pooled_size, summary_rows=1))
    return readers


def text_weights(pipeline) -> dict[str, torch.Tensor]:
    """A copy of every weight the edit can change (for `restore_text_weights`)."""
    return {name: linear.weight.detach().clone()
            for reader in text_readers(pipeline) for name, linear in reader.linears}


@torch.no_grad()
def restore_text_weights(pipeline, weights: dict[str, torch.Tensor]) -> None:
    for reader in text_readers(pipeline):
        for name, linear in reader.linears:
            linear.weight.copy_(weights[name])


@dataclass(frozen=True)
class Mapping:
    """Edited text: `source` at `positions` should read as the `goals` mix at their positions.

    Each goal is (encoded, positions, weight); the wanted output of a map W is
    sum(weight * W rows(goal)). Erase has one goal of weight 1 (the target); debias mixes the
    prompt itself with its attribute-valued versions.
    """

    source: Encoded
    positions: tuple[int, ...]
    goals: tuple[tuple[Encoded, tuple[int, ...], float], ...]
    # Whether this mapping also sets the rows that summarise the prompt (the pooled text's class
    # token, SDXL's pooled embedding). A prompt split over several mappings (debias's padding
    # turns) sets them in one only; fitted to every mapping's goal they read as the goals'
    # average, not the wanted mix.
    summary: bool = True


def refuse_truncated(encoded: Sequence[Encoded]) -> None:
    """A UserError for the first text cut at the tokenizer's length: pairing lines two texts
    up from their ends, which a cut end no longer marks (every later word would be paired
    with its neighbour's token)."""
    for text in encoded:
        if text.truncated:
            raise UserError(f"{text.text[:80]!r} is longer than the text encoder reads "
                            f"({len(text.ids)} tokens), so the edit cannot pair its words; "
                            "shorten the template, context or prompt")


def pair_encoded(source: Encoded, goal: Encoded) -> Mapping:
    """`source` read as `goal`, tokens paired as the reference pairs them (`token_pairs`)."""
    refuse_truncated((source, goal))
    pairs = token_pairs(source.ids, goal.ids, len(source.tokens))
    return Mapping(source, tuple(c for c, _ in pairs), ((goal, tuple(t for _, t in pairs), 1.0),))


def pair(pipeline, concept: str, target: str) -> Mapping:
    """`concept` read as `target` (`pair_encoded`)."""
    return pair_encoded(*encode_all(pipeline, [concept, target]))


def closed_form(mapped: torch.Tensor, goals: torch.Tensor, kept: torch.Tensor,
                preserve_weight: float, regularizer: float) -> torch.Tensor:
    """F (in x in) with W' = W F the UCE minimiser for every W that reads these rows, float64.

    `mapped` (n x in) should give W's outputs for `goals` (n x in), `kept` (m x in) its own:
    W' = (lam W + sum W g c^T + ps sum W p p^T)(lam I + sum c c^T + ps sum p p^T)^-1 = W F,
    so one solve serves every map of a reader.
    """
    eye = torch.eye(mapped.shape[1], dtype=torch.float64)
    kept_gram = preserve_weight * kept.T @ kept
    left = regularizer * eye + goals.T @ mapped + kept_gram
    right = regularizer * eye + mapped.T @ mapped + kept_gram
    return torch.linalg.solve(right, left.T).T  # left @ right^-1; right is symmetric


@torch.no_grad()
def edit_text_paths(pipeline, mappings: Sequence[Mapping], preserved: Sequence[Encoded],
                    preserve_weight: float = PRESERVE_WEIGHT,
                    regularizer: float = REGULARIZER) -> dict:
    """Apply the closed-form edit to every text reader of `pipeline` (in place).

    Returns {"layers", "paths" ({path: linear maps edited}), "weights_sha256"}: the digest
    covers every edited weight, in reader order, so a dataset says exactly which model made it.
    """
    digest = hashlib.sha256()
    paths: dict[str, int] = {}
    for reader in text_readers(pipeline):
        if not mappings:  # nothing to map: the minimiser is W itself
            for _, linear in reader.linears:
                digest.update(linear.weight.detach().cpu().contiguous().float().numpy().tobytes())
            paths[reader.path] = len(reader.linears)
            continue
        mapped = torch.cat([reader.mapping_rows(m.source, m.positions, m.summary) for m in mappings])
        # W applied to a mix of goal rows is the mix of W's outputs: the goals mix as inputs.
        goals = torch.cat([sum(share * reader.mapping_rows(goal, positions, m.summary)
                               for goal, positions, share in m.goals)
                           for m in mappings])
        kept = (torch.cat([reader.rows(encoded, None) for encoded in preserved]) if preserved
                else mapped.new_zeros(0, mapped.shape[1]))
        factor = closed_form(mapped, goals, kept, preserve_weight, regularizer)
        for _, linear in reader.linears:
            full = linear.weight.detach().double().cpu()
            columns = full.shape[1] if reader.columns is None else reader.columns
            edited = torch.cat([full[:, :columns] @ factor, full[:, columns:]], dim=1)
            linear.weight.copy_(edited.to(linear.weight.dtype))
            digest.update(linear.weight.detach().cpu().contiguous().float().numpy().tobytes())
        paths[reader.path] = len(reader.linears)
    return {"layers": sum(paths.values()), "paths": paths, "weights_sha256": digest.hexdigest()}


def replace_concept(prompt: str, concept: str, target: str) -> str:
    """`prompt` with `concept` (as whole words, as `attributes.concept_words` finds a concept:
    `\\b` would not match after "C++") replaced by `target` as written, whitespace collapsed."""
    return " ".join(re.sub(rf"(?<!\w){re.escape(concept)}(?!\w)", lambda _: target, prompt).split())


@torch.no_grad()
def erase_concept(pipeline, concept: str, target: str = "", preserve: Sequence[str] = (),
                  contexts: Sequence[str] = (), preserve_weight: float = PRESERVE_WEIGHT,
                  regularizer: float = REGULARIZER) -> dict:
    """Edit `pipeline.unet` in place so `concept` reads as `target`; returns the edit record.

    The concept is mapped alone (as the reference does) and inside each prompt of `contexts`
    (prompts that use it), where it becomes the same prompt with `target` instead. Those
    target prompts are preserved along with `preserve`: a small text encoder spreads the
    concept over every later token of a prompt (world-clip's tokens after "striped" differ from
    the plain caption's by cosine 0.54-0.79), so the concept's word alone does not carry it,
    and an edit learnt from contexts without their plain versions changed plain prompts too.
    """
    pairs = [(concept, target), *((p, replace_concept(p, concept, target)) for p in contexts)]
    kept_texts = list(dict.fromkeys([*preserve, *(goal for _, goal in pairs[1:])]))
    texts = list(dict.fromkeys([*(text for text_pair in pairs for text in text_pair), *kept_texts]))
    encoded = dict(zip(texts, encode_all(pipeline, texts)))
    record = edit_text_paths(pipeline, [pair_encoded(encoded[c], encoded[t]) for c, t in pairs],
                             [encoded[text] for text in kept_texts], preserve_weight, regularizer)
    return {"method": "erase", "concept": concept, "target": target, "preserve": list(preserve),
            "contexts": len(contexts), "preserve_weight": preserve_weight,
            "regularizer": regularizer, **record}


def fill_templates(templates: Sequence[str], count: int, seed: int,
                   slots: dict[str, Sequence[str]], fixed: dict[str, str]) -> list[str]:
    """`count` prompts from `templates` (cycled), each slot a uniform draw from its values.

    `fixed` slots (the concept, a class name) take their given value. Values are drawn
    uniformly rather than by the recipe's weights: an edit must hold for rare values too.
    `{{` and `}}` read as braces, in templates and slot values alike, as the plan reads them.
    Deterministic in `seed`; duplicates are dropped, order kept.
    """
    rng = random.Random(seed)
    prompts = []
    for index in range(count if templates else 0):
        text = _literal_braces_kept(templates[index % len(templates)])
        while names := template_slots(text):  # slot values may name slots (the recipe forbids cycles)
            # Fixed values (a concept, a class name) are put in as written, as the plan puts
            # them: braces in them are text, never slots of a later pass.
            text = _literal_braces_kept(text.format(**{
                name: as_text(fixed[name]) if name in fixed else rng.choice(list(slots[name]))
                for name in names}))
        text = text.replace(_OPEN, "{").replace(_CLOSE, "}")
        prompts.append(" ".join(text.split()))
    return list(dict.fromkeys(prompts))


# Stand-ins for literal braces while a text is formatted pass after pass: a second pass must
# not read the "{brand}" that the first made of "{{brand}}" as a slot.
_OPEN, _CLOSE = "\ue000", "\ue001"


def as_text(value: str) -> str:
    """`value` with every brace a stand-in for `fill_templates`: put in as written (a class
    name, a balanced value), as the plan puts it, never read as a slot by a later pass."""
    return value.replace("{", _OPEN).replace("}", _CLOSE)


def _literal_braces_kept(text: str) -> str:
    """`text` with its literal braces (written `{{`, `}}`) swapped for stand-ins, its slots kept."""
    parts = []
    for literal, field, _, _ in string.Formatter().parse(text):
        parts.append(literal.replace("{", _OPEN).replace("}", _CLOSE))
        if field is not None:
            parts.append("{" + field + "}")
    return "".join(parts)


def context_prompts(templates: Sequence[str], concept: str, count: int, seed: int,
                    slots: dict[str, Sequence[str]], class_names: Sequence[str]) -> list[str]:
    """Prompts using `concept` from context templates: `{concept}` is the concept, `{class}` a
    class name, other slots the recipe's values (`fill_templates`)."""
    return fill_templates(templates, count, seed,
                          {**slots, CLASS_SLOT: [as_text(name) for name in class_names]},
                          {CONTEXT_SLOT: concept})


def describe_edit(record: dict) -> str:
    """One line for a person: what an erase or debias edit record says was changed."""
    paths = ", ".join(f"{path} {count}" for path, count in record.get("paths", {}).items())
    where = f"{record['layers']} linear maps ({paths})" if paths else f"{record['layers']} projections"
    if record.get("method") == "debias":
        return (f"debiased {record.get('attribute', 'an attribute')!r} of {record['targets']} in "
                f"{where}, weights {record['weights_sha256'][:12]}")
    return (f"erased {record['concept']!r} -> {record['target']!r} in {where} (keeping "
            f"{record['preserve']}), weights {record['weights_sha256'][:12]}")
