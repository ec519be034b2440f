"""What the runs of one sweep process share: loaded data, loaded teachers, teacher evaluations."""
from __future__ import annotations

import hashlib
import time
from typing import Any

from crossdistill.config import CompressConfig
from crossdistill.models.checkpoint import tensors_sha256
from crossdistill.errors import CrossDistillError
from crossdistill.sweep.hashing import json_sha256
from crossdistill.sweep.store import SweepDB


class RunContext:
    """What runs of one sweep share: loaded data, loaded teachers and their evaluations.

    Loading CIFAR-10 or evaluating ResNet-56 on the test set costs as much as a whole
    compression, so each is done once per sweep process (teacher evaluations once per database).
    """

    def __init__(self, db: SweepDB | None) -> None:
        # Without a database (a Ray worker: only the driver writes it) teacher evaluations are
        # cached in this process.
        self.db = db
        self._metrics: dict[str, Any] = {}
        self._data: dict[tuple[str, str], Any] = {}
        self._teachers: dict[tuple[str, str | None], Any] = {}
        self._teacher_keys: dict[tuple[str, str | None], str] = {}
        self._data_keys: dict[tuple[str, str], str] = {}

    def data(self, spec: str, split: str, order_given: bool = False) -> Any:
        from crossdistill.data import load_image_data
        from crossdistill.data.readers_folder import order_given as quiet_order

        key = (spec, split)
        if key not in self._data:
            with quiet_order(order_given):
                self._data[key] = load_image_data(spec, split)
        return self._data[key]

    def scored_test(self, cfg: CompressConfig) -> Any:
        """The test data of `cfg` numbered as its run numbers it (pipeline.run): by the class
        list `classes`, else by the training data's names."""
        from crossdistill.data.align import align_classes, order_classes

        names = None
        if cfg.data:
            train = self.data(cfg.data, "train", bool(cfg.classes))
            names = order_classes(train, cfg.classes).class_names if cfg.classes else train.class_names
        return align_classes(self.data(cfg.eval_data, "test", names is not None), names)

    def teacher(self, cfg: CompressConfig) -> Any:
        import torch

        from crossdistill.pipeline import load_teacher

        key = (cfg.model, cfg.weights)
        if key not in self._teachers:
            if cfg.weights is None:
                # A teacher without weights is random; seeding makes its runs reproducible.
                torch.manual_seed(0)
            teacher = load_teacher(cfg)
            self._teachers[key] = teacher
            self._teacher_keys[key] = tensors_sha256(sorted(teacher.state_dict().items()))
        return self._teachers[key]

    def check_teacher_unchanged(self, cfg: CompressConfig) -> None:
        """The teacher is shared by every run of the sweep; a run that changed it in place would
        silently alter all later runs, so it is reloaded and the run fails instead."""
        key = (cfg.model, cfg.weights)
        teacher = self._teachers.get(key)
        if teacher is not None and tensors_sha256(sorted(teacher.state_dict().items())) != self._teacher_keys[key]:
            del self._teachers[key]
            raise CrossDistillError("the run modified the teacher's weights in place (a bug); it is reloaded")

    def _data_key(self, spec: str, split: str) -> str:
        key = (spec, split)
        if key not in self._data_keys:
            d = self.data(spec, split)
            h = hashlib.sha256(d.x.tobytes())
            h.update(d.y.astype("int64").tobytes())
            self._data_keys[key] = h.hexdigest()
        return self._data_keys[key]

    def teacher_metrics(self, cfg: CompressConfig) -> dict[str, Any] | None:
        """The teacher's evaluation on cfg.eval_data, from the database or computed once.

        Keyed by the teacher's tensors, the test images and the latency setting (with its thread
        count), so a changed weights file, test set or thread count never reuses a stale number.
        """
        from crossdistill.evaluation import evaluate_for
        from crossdistill.models import model_info
        from crossdistill.pipeline import info_of

        if not cfg.eval_data:
            return None
        teacher = self.teacher(cfg)
        test = self.scored_test(cfg)
        key_src = {
            "model": cfg.model,
            "teacher": self._teacher_keys[(cfg.model, cfg.weights)],
            "eval_data": self._data_key(cfg.eval_data, "test"),
            "latency": bool(cfg.latency),
        }
        raw = self.data(cfg.eval_data, "test")
        if test.y is not raw.y and not (test.y == raw.y).all():
            # Labels renumbered (by --classes, or by the training data's names): another score.
            # Left out otherwise, so that evaluations stored before stay found under their key.
            key_src["labels"] = hashlib.sha256(test.y.astype("int64").tobytes()).hexdigest()
        if cfg.latency:
            # Timed at the run's thread count, as its student is: a teacher timed at 2 threads
            # beside students at 1 made a 39x "speed-up". (Without latency the digest is the one
            # stored evaluations were made with.)
            key_src["threads"] = cfg.threads
        key = json_sha256(key_src)
        cached = self.db.teacher_metrics(key) if self.db is not None else self._metrics.get(key)
        if cached is not None:
            return cached
        start = time.perf_counter()
        # The registry's info, or a user model's (input size, mean, std from the config and the data).
        info = info_of(cfg, teacher, self.data(cfg.data, "train", bool(cfg.classes))) if cfg.data \
            else model_info(cfg.model)
        metrics = evaluate_for(teacher, test, info, latency=cfg.latency, threads=cfg.threads)
        if self.db is not None:
            self.db.store_teacher_metrics(key, cfg.model, cfg.weights, cfg.eval_data, metrics,
                                          time.perf_counter() - start)
        else:
            self._metrics[key] = metrics
        return metrics
