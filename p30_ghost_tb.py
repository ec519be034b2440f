import sys; sys.path.insert(0, "/tmp/probe15h")
from common import *; import models, crossdistill
xtr, ytr, xte, yte = data()
m = train(models.ghost(), xtr, ytr, tag="ghost")
for kw in [dict(keep=0.5), dict(flops=0.5)]:
    try:
        crossdistill.compress(m, xtr, labels=ytr, shots=5, method="channels", show_progress=False, **kw)
    except Exception:
        traceback.print_exc()
