"""Only the C extension; everything else about the package is in pyproject.toml.

pipelines._jpeg_window: the FFCV loader's JPEG window decoder (pipelines/_jpeg_window.c), linked against the
system's libjpeg(-turbo) (apt: libjpeg-dev; conda: libjpeg-turbo).
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("pipelines._jpeg_window", ["pipelines/_jpeg_window.c"], libraries=["jpeg"])])
