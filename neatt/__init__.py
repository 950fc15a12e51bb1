"""neatt: a fast ViT trainer with the Ne-Att nested-attention Vision Transformer.

Importing the package registers the ``neatt_vit_*`` models in timm's registry.
"""
__version__ = "0.1.0"

from . import models  # noqa: E402,F401  (registers the neatt_vit_* models in timm)
