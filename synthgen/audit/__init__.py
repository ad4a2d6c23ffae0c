"""`synthgen audit DIR`: measure what a finished dataset holds, from its shards alone.

The audit is a chain of streaming stages over the dataset's views; only embeddings (one small
vector per view) and per-view results stay in memory, never the images:

    spec.py       what to measure: attributes, targets, concepts, thresholds (recipe + options)
    source.py     shards -> ViewItem (sha256 checked per shard, missing views recorded)
    decode.py     encoded bytes -> uint8 tensors (PIL on the CPU, nvJPEG on a GPU), black check
    encoder.py    uint8 tensors / texts -> unit embeddings (a CLIP, or any ImageTextEncoder)
    cache.py      embeddings.npz beside the report, keyed by view, image digest and model identity
    classify.py   zero-shot attributes (prompt ensembles, "unsure" margin), concept detection
    metrics.py    distribution metrics: Wilson intervals, KL, entropy, chi-square, agreement
    similarity.py views alike within groups, diversity between groups, near-duplicates (blockwise)
    measurements/ one module per measurement (attributes, suppression, similarity, fidelity,
                  duplicates, integrity), each with its section, --fail-on figures, printed
                  lines and report.html part; registered once in measurements/__init__.py
    run.py        strings the stages together into one report dict (+ images for the report)
    thresholds.py --fail-on rules over the measurements' figures
    render.py     HTML tables and captioned PNG pictures the report sections are built from
    report.py     report.json, views.jsonl, report.html (page, summary, contact sheets)
    command.py    the click command `audit`
"""
