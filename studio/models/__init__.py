"""Base models and backbones: built-in tiny ones and real ones, through one loading path."""

from studio.models.builtin import BuiltinModel, builtin_path, builtins, get_builtin, is_builtin, materialize
from studio.models.loader import BaseModel, load_base, load_configured_base, load_tokenizers, refuse_pickle

__all__ = [
    "BaseModel",
    "BuiltinModel",
    "builtin_path",
    "builtins",
    "get_builtin",
    "is_builtin",
    "load_base",
    "load_configured_base",
    "load_tokenizers",
    "materialize",
    "refuse_pickle",
]
