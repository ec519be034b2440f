"""Model zoo: CIFAR ResNets, CIFAR VGG-16, a Fashion-MNIST CNN and ImageNet ResNet-18/34.

Every model exposes `channel_pairs()` (what channel pruning may cut) and `spec()`
(constructor kwargs that rebuild the current, possibly slimmed, architecture).
"""
from crossdistill.models.registry import (
    ChannelPair,
    ModelInfo,
    create_like,
    create_model,
    list_models,
    model_info,
    register_model,
    spec_from_state_dict,
)

# Imported for their registration side effect.
from crossdistill.models import cifar_resnet, imagenet_resnet, small_cnn, vgg  # noqa: E402,F401
from crossdistill.models.checkpoint import (  # noqa: E402
    Checkpoint,
    load_checkpoint,
    load_model,
    load_state_dict_file,
    load_weights,
    save_model,
)

__all__ = [
    "ChannelPair",
    "Checkpoint",
    "ModelInfo",
    "create_like",
    "create_model",
    "list_models",
    "load_checkpoint",
    "load_model",
    "load_state_dict_file",
    "load_weights",
    "model_info",
    "register_model",
    "save_model",
    "spec_from_state_dict",
]
