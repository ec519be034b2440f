"""crossdistill: few-shot compression of pretrained networks by cross distillation."""
import typing as _typing

from crossdistill._version import __version__
from crossdistill.errors import CrossDistillError

__all__ = ["CrossDistillError", "StackedInputs", "__version__", "compress", "export_model", "load", "save", "settings"]

if _typing.TYPE_CHECKING:  # what type checkers and IDEs see of the lazy names below
    from crossdistill.api import compress
    from crossdistill.config.catalog import settings
    from crossdistill.export import export_model
    from crossdistill.model_inputs import StackedInputs
    from crossdistill.persistence import load, save


if not _typing.TYPE_CHECKING:  # hidden from type checkers, which then report a misspelt name
    def __getattr__(name: str) -> _typing.Any:
        # Lazy: `import crossdistill` stays light (no torch import) until a model is saved or loaded.
        if name in ("load", "save"):
            from crossdistill import persistence

            return getattr(persistence, name)
        if name == "compress":
            from crossdistill.api import compress

            return compress
        if name == "StackedInputs":
            from crossdistill.model_inputs import StackedInputs

            return StackedInputs
        if name == "settings":
            from crossdistill.config.catalog import settings

            return settings
        if name == "export_model":
            from crossdistill.export import export_model

            return export_model
        import importlib
        import importlib.util

        if not name.startswith("_") and importlib.util.find_spec(f"crossdistill.{name}") is not None:
            # `crossdistill.export.export_model(...)` after a bare `import crossdistill`.
            return importlib.import_module(f"crossdistill.{name}")
        raise AttributeError(f"module 'crossdistill' has no attribute {name!r}")


def __dir__() -> list[str]:
    # The lazy names too: tab completion and dir() should show what the package offers.
    return sorted(set(globals()) | set(__all__))
