"""Offline dataset conversion (``tools/convert_datasets.py`` is its thin CLI) and the dataset manifest.

Modules: ``manifest`` (schema, read/write; the loaders use it too), ``sources`` (imagenet / cifar100 / folder /
digits readers), ``images`` (decode, fix and resize one image), ``dali_writer`` (webdataset shards + DALI index),
``ffcv_writer`` (deterministic .beton), ``convert`` (the driver). Heavy imports (ffcv) happen only where used.
"""
from .manifest import FORMAT_VERSION, ManifestError, read_manifest, write_manifest

__all__ = ["FORMAT_VERSION", "ManifestError", "read_manifest", "write_manifest"]
