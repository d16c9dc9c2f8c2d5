"""The model zoo: a timm-style registry of face gender/age models.

>>> from agegender.models import create_model, TaskSpec
>>> model = create_model("small_resnet", TaskSpec(gender=True, age="groups"))
>>> out = model(x)  # {"gender": (B, 2) logits, "age": (B, 8) logits}

Importing this package registers every model (the modules below register on import).
"""

# importing the model modules registers their models
from agegender.models import dlib_resnet, levi_hassner, small_cnn, timm_backbones  # noqa: F401
from agegender.models.heads import AGE_MODES, TaskSpec, dex_expected_age
from agegender.models.registry import (
    FaceModel,
    ModelEntry,
    create_model,
    get_model_entry,
    is_model,
    keras_param_count,
    list_models,
    load_weights,
    model_info,
    read_state_dict,
    register_model,
)

__all__ = [
    "AGE_MODES",
    "FaceModel",
    "ModelEntry",
    "TaskSpec",
    "create_model",
    "dex_expected_age",
    "get_model_entry",
    "is_model",
    "keras_param_count",
    "list_models",
    "load_weights",
    "model_info",
    "read_state_dict",
    "register_model",
]
