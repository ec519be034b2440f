"""What the fine-tune trains on: random views of the few images (`augment`) and blends of
pairs of them (`mix`); the teacher labels whatever the student sees."""
from crossdistill.finetune.views.augment import AUGMENT_POLICIES, VIEWS, affine_views, crop_flip
from crossdistill.finetune.views.mix import mix

__all__ = ["AUGMENT_POLICIES", "VIEWS", "affine_views", "crop_flip", "mix"]
