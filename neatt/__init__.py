"""neatt: a fast ViT trainer with the Ne-Att nested-attention Vision Transformer.

Importing the package registers the ``neatt_vit_*`` models in timm's registry.
"""
__version__ = "0.1.0"

from .runtime import numba_wide_vectors_by_default, short_openmp_spin_by_default

short_openmp_spin_by_default()  # before the import below loads torch and its OpenMP; see neatt.runtime
numba_wide_vectors_by_default()  # before the kernel modules below compile anything; see neatt.runtime

from . import models  # noqa: E402,F401  (registers the neatt_vit_* models in timm)
