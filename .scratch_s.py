import torch
from synthgen.generate.load import load_pipeline
from synthgen.generate.sampler import Sampler
from synthgen.recipe import ModelSpec, ViewsSpec
from synthgen.views import plan_views
for sched in (None, "DDIMScheduler"):
    SPEC = ModelSpec(id="builtin:tiny-random", steps=2, width=32, height=32, **({"scheduler": sched} if sched else {}))
    m = load_pipeline(SPEC, torch.device("cpu"), torch.float32)
    s = Sampler(m, SPEC, batch_size=2)
    for st in (0.0005, 0.3, 0.9):
        v = list(plan_views(ViewsSpec(count=2, strategy="img2img", img2img={"strength": st}), 1, "g", "a red circle", ""))
        try:
            im = s.sample(v).images.float(); print(sched, st, "ok", float((im[1]-im[0]).abs().mean()))
        except Exception as e: print(sched, st, "FAIL", repr(e)[:200])
