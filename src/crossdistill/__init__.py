"""crossdistill: few-shot compression of pretrained networks by cross distillation."""
from crossdistill._version import __version__
from crossdistill.errors import CrossDistillError

__all__ = ["CrossDistillError", "__version__", "compress", "load", "save"]


def __getattr__(name: str):
    # Lazy: `import crossdistill` stays light (no torch import) until a model is saved or loaded.
    if name in ("load", "save"):
        from crossdistill import persistence

        return getattr(persistence, name)
    if name == "compress":
        from crossdistill.api import compress

        return compress
    raise AttributeError(f"module 'crossdistill' has no attribute {name!r}")
