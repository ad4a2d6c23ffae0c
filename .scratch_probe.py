import torch, math
from synthgen.generate.load import load_pipeline
from synthgen.generate.sampler import Sampler
from synthgen.recipe import ModelSpec, ViewsSpec
from synthgen.views import plan_views
SPEC = ModelSpec(id="builtin:tiny-random", steps=2, width=32, height=32)
m = load_pipeline(SPEC, torch.device("cpu"), torch.float32)
print(type(m.pipeline).__name__, m.pipeline.scheduler.__class__.__name__, m.pipeline.scheduler.config.get("timestep_spacing"), m.pipeline.scheduler.config.get("steps_offset"))
s = Sampler(m, SPEC, batch_size=4)
for st in (0.2, 0.5, 0.6, 0.9, 1.0):
    v = list(plan_views(ViewsSpec(count=3, strategy="img2img", img2img={"strength": st}), 1, "g", "a red circle", ""))
    im = s.sample(v).images.float()
    print(st, [float((im[i]-im[0]).abs().mean()) for i in (1,2)])
