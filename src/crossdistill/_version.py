"""The package version, in a module that imports nothing, so anything may import it (including
setuptools, which reads it for pyproject's dynamic version) without an import circle."""
__version__ = "0.1.0"
