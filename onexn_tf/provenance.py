"""Versions of the tools that made an artifact, for the JSON records written beside it."""
from __future__ import annotations

import importlib.metadata
import platform

PACKAGES = ("tensorflow", "tf-keras", "tensorflow-model-optimization", "tensorflow-datasets", "tf2onnx", "onnx",
            "onnxruntime", "apache-tvm", "onexn-tf")


def tool_versions(packages=PACKAGES) -> dict:
    """Installed version of each package (None when it is not installed)."""
    versions = {"python": platform.python_version()}
    for package in packages:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions
