"""Prompt fidelity (`fidelity`): the CLIP score of each view against its own prompt (cosine,
not x100), the views below the threshold and the worst ones, pictured with their captions."""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from synthgen.audit.measurements.base import OVERALL, Measurement, MeasurementInputs, view_scopes
from synthgen.audit.render import captioned_grid, fmt, html_table, view_caption, write_png

if TYPE_CHECKING:
    from synthgen.audit.classify import TextEmbeddings
    from synthgen.audit.run import ViewTable

PICTURE = "worst-fidelity.png"


def measure_fidelity(table: ViewTable, texts: TextEmbeddings, threshold: float, worst: int) -> dict:
    """CLIP score (cosine of a view and its own prompt) per view; the views below threshold."""
    if not len(table.items):
        return {"threshold": threshold, "views": 0, "mean": None, "below": 0, "below_rate": None,
                "per_scope": {}, "worst": []}
    prompts = [item.prompt for item in table.items]
    unique = list(dict.fromkeys(prompts))
    index = {prompt: i for i, prompt in enumerate(unique)}
    prompt_embeddings = texts(unique)
    rows_prompt = np.array([index[p] for p in prompts])
    scores = np.einsum("ij,ij->i", table.embeddings, prompt_embeddings[rows_prompt])
    below = scores < threshold
    per_scope = {scope: {"views": int(len(rows)), "mean": float(scores[rows].mean()),
                         "below": int(below[rows].sum())}
                 for scope, rows in view_scopes(table).items() if scope != OVERALL}
    lowest = np.argsort(scores)[:worst]
    return {"threshold": threshold, "views": int(len(scores)), "mean": float(scores.mean()),
            "median": float(np.median(scores)), "below": int(below.sum()),
            "below_rate": float(below.mean()), "per_scope": per_scope,
            "worst": [{"view": table.view_ids[i], "score": float(scores[i]),
                       "prompt": table.items[i].prompt, "scope": table.items[i].scope}
                      for i in lowest],
            "per_view": dict(zip(table.view_ids, scores.tolist()))}


def measure(inputs: MeasurementInputs) -> dict:
    return measure_fidelity(inputs.table, inputs.texts, inputs.spec.fidelity_threshold,
                            inputs.settings.worst_views)


def figures(section: dict) -> dict:
    return {"low_fidelity": section["below_rate"]}


def printed(section: dict) -> list[str]:
    mean = "-" if section["mean"] is None else f"{section['mean']:.4f}"
    return [f"  fidelity: mean {mean}, {section['below']} views below {section['threshold']}"]


def pictured(section: dict) -> set[str]:
    return {entry["view"] for entry in section["worst"]}


def per_view(section: dict) -> dict[str, dict]:
    return {view_id: {"clip_score": score} for view_id, score in section.pop("per_view", {}).items()}


def report_html(section: dict, report_dir: Path, pictures: dict[str, bytes]) -> list[str]:
    worst = section["worst"]
    write_png(report_dir, PICTURE, captioned_grid(
        [(view_caption(w["view"], w["scope"]) + [f"CLIP score {w['score']:.3f}"],
          pictures.get(w["view"])) for w in worst]))
    parts = [f"<h2>Fidelity</h2><p>CLIP score = cosine of a view and its own prompt. Mean "
             f"{fmt(section['mean'])}; {section['below']} views below {section['threshold']}.</p>"]
    if worst:
        parts.append(html_table(["view", "class / corner case", "score", "prompt"],
                                [[w["view"], w["scope"], w["score"], w["prompt"]] for w in worst]))
        parts.append(f"<img src='{html.escape(PICTURE)}' alt='worst fidelity views'>")
    return parts


MEASUREMENT = Measurement(
    name="fidelity", measure=measure, html=report_html, figures=figures, printed=printed,
    pictured=pictured, per_view=per_view,
    fail_on={"low_fidelity": "fraction of views whose CLIP score is below the fidelity threshold"})
