"""`crossdistill demo`: Fashion-MNIST end to end on a laptop.

Trains a small teacher once (cached per user), removes half of its channels by cross
distillation from K = 5 images per class, and compares teacher, prune-only and
cross-distilled student on the full test set. Everything runs offline once Fashion-MNIST is on
disk (Debian's dataset-fashion-mnist, or a checksummed download on first use).

Modules: teacher (recipe, training), cache (the per-user teacher cache), options (what a run is
asked to do), run (the run), report (summary, printed table, report.md, demo.png).
"""
from crossdistill.demo.cache import (
    TeacherEntry, get_teacher, load_cached_teacher, store_teacher, teacher_cache_dir,
)
from crossdistill.demo.options import DEFAULT_OUT, DEMO_KIND, DemoOptions, compress_config, is_demo_report
from crossdistill.demo.report import build_summary, demo_figure, demo_markdown, print_results, write_report
from crossdistill.demo.run import default_threads, run_demo, subset
from crossdistill.demo.teacher import TEACHER_FORMAT, TeacherRecipe, fingerprint, train_teacher

__all__ = [
    "DEFAULT_OUT", "DEMO_KIND", "TEACHER_FORMAT", "DemoOptions", "TeacherEntry", "TeacherRecipe", "build_summary",
    "compress_config", "default_threads", "demo_figure", "demo_markdown", "fingerprint", "get_teacher",
    "is_demo_report", "load_cached_teacher", "print_results", "run_demo", "store_teacher", "subset",
    "teacher_cache_dir", "train_teacher", "write_report",
]
