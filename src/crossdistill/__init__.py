"""crossdistill: few-shot compression of pretrained networks by cross distillation."""
from crossdistill.errors import CrossDistillError

__version__ = "0.1.0"

__all__ = ["CrossDistillError", "__version__"]
