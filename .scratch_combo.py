import torch, itertools, traceback
from synthgen.generate.load import load_pipeline
from synthgen.generate.sampler import Sampler, Rejector
from synthgen.recipe import ModelSpec, ViewsSpec
from synthgen.views import plan_views, ViewText
SPEC = ModelSpec(id="builtin:tiny-random", steps=2, width=32, height=32)
m = load_pipeline(SPEC, torch.device("cpu"), torch.float32)
texts = [ViewText(prompt=f"a {c} dog", slots={"colour": c}, balance={}) for c in ("red","blue","green")]
combos = [["prompt"],["prompt","img2img"],["seeds","img2img"],["slots","img2img"],["slots","img2img","prompt"],
          ["slots","latent","prompt"],["latent"],["img2img"],["slots","prompt"]]
for combo in combos:
    kw = dict(count=3, strategy=combo, prompt={"modifiers":["x","y"]} if "prompt" in combo else None,
              slots={"vary":["colour"], "splice_text": True} if "slots" in combo else None)
    kw = {k:v for k,v in kw.items() if v is not None}
    spec = ViewsSpec(**kw)
    for bs in (1,2,4):
        try:
            views=[]
            for g in ("a","b"):
                views += plan_views(spec, 1, g, "a red dog", "", texts if "slots" in combo else ())
            s = Sampler(m, SPEC, batch_size=bs)
            out=[]
            for i in range(0,len(views),bs):
                out.append(s.sample(views[i:i+bs]).images)
            print(combo, bs, "ok")
        except Exception as e:
            print(combo, bs, "FAIL", repr(e)[:300])
