"""The dataset directory's ``manifest.json``: build, validate, read and (atomically) write it.

The keys are the contract between the converter and the loaders (docs/architecture.md, section 1). A format/split
is listed under ``formats`` only once its files are complete, so a reader can trust every file the manifest names.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
from typing import Optional

from neatt.fileio import write_json_atomic

__all__ = ["FORMAT_VERSION", "TOOL", "MANIFEST_NAME", "ManifestError", "new_manifest", "read_manifest",
           "write_manifest", "validate_manifest", "file_sha256", "entry_files", "file_problems"]

FORMAT_VERSION = 1
TOOL = "neatt.convert_datasets 0.1.0"
MANIFEST_NAME = "manifest.json"

_REQUIRED = ("format_version", "tool", "dataset", "source", "created", "classes", "num_classes", "image_policy",
             "splits", "formats", "skipped")


class ManifestError(ValueError):
    """A manifest that is missing, unreadable or does not follow the contract; the message names the file."""


def new_manifest(dataset: str, source: Optional[str], classes: list, image_policy: dict) -> dict:
    """A manifest with no splits or formats yet (they are added as they complete)."""
    return {
        "format_version": FORMAT_VERSION,
        "tool": TOOL,
        "dataset": dataset,
        "source": source,
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "classes": list(classes),
        "num_classes": len(classes),
        "image_policy": dict(image_policy),
        "splits": {},
        "formats": {},
        "skipped": [],
    }


def validate_manifest(m: dict, where: str = MANIFEST_NAME) -> dict:
    """Check the contract's keys and their consistency; raise ManifestError naming ``where`` and the problem."""
    if not isinstance(m, dict):
        raise ManifestError(f"{where}: expected a JSON object")
    missing = [k for k in _REQUIRED if k not in m]
    if missing:
        raise ManifestError(f"{where}: missing keys {missing}; was it written by an older tool? Re-run "
                            f"tools/convert_datasets.py with --force")
    if m["format_version"] != FORMAT_VERSION:
        raise ManifestError(f"{where}: format_version {m['format_version']} but this code reads {FORMAT_VERSION}; "
                            f"re-run tools/convert_datasets.py with --force")
    if m["num_classes"] != len(m["classes"]):
        raise ManifestError(f"{where}: num_classes {m['num_classes']} != len(classes) {len(m['classes'])}")
    for split, info in m["splits"].items():
        if sum(info["label_counts"]) != info["count"] or len(info["label_counts"]) != m["num_classes"]:
            raise ManifestError(f"{where}: splits.{split}: label_counts do not add up to count / num_classes")
    for fmt, per_split in m["formats"].items():
        for split in per_split:
            if split not in m["splits"]:
                raise ManifestError(f"{where}: formats.{fmt}.{split} names a split missing from splits")
    return m


def read_manifest(data_dir: str) -> dict:
    """Read and validate ``<data_dir>/manifest.json``; the error says how to create one if it is missing."""
    path = os.path.join(data_dir, MANIFEST_NAME)
    if not os.path.isfile(path):
        inside = sorted(d.path for d in os.scandir(data_dir)
                        if d.is_dir() and os.path.isfile(os.path.join(d.path, MANIFEST_NAME))) \
            if os.path.isdir(data_dir) else []
        if inside:  # the --out folder given instead of the dataset folder that the converter made in it
            raise ManifestError(f"{path} not found, but {data_dir} holds converted datasets: pass one of "
                                f"{', '.join(inside)}")
        raise ManifestError(f"{path} not found: convert a dataset first, e.g. "
                            f"`python tools/convert_datasets.py digits --out {os.path.dirname(data_dir) or '.'}`")
    try:
        with open(path) as f:
            m = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ManifestError(f"{path}: cannot read ({e}); re-run tools/convert_datasets.py with --force") from None
    return validate_manifest(m, path)


def write_manifest(data_dir: str, m: dict) -> None:
    """Validate, then write through a temporary file and ``os.replace``, so readers never see half a manifest."""
    path = os.path.join(data_dir, MANIFEST_NAME)
    validate_manifest(m, path)
    write_json_atomic(m, path, indent=1)


def file_sha256(path: str, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes, read in chunks (shards and .beton files can be many GB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def entry_files(entry: dict) -> list:
    """``[(path relative to the dataset dir, size in bytes, sha256)]`` of one ``formats[fmt][split]`` entry: the
    .beton, or the DALI shards and their index files (whose size and sha256 are None in manifests written before
    they were kept)."""
    if "file" in entry:
        return [(entry["file"], entry["bytes"], entry["sha256"])]
    return [(sh["tar"], sh["bytes"], sh["sha256"]) for sh in entry["shards"]] + \
        [(sh["index"], sh.get("index_bytes"), sh.get("index_sha256")) for sh in entry["shards"]]


def file_problems(data_dir: str, entry: dict, hashes: bool = False) -> list:
    """What is wrong with the files of one manifest entry, one sentence each: missing, another size, and with
    ``hashes`` another sha256 (reads every file in full: minutes for ImageNet)."""
    problems = []
    for rel, size, sha in entry_files(entry):
        path = os.path.join(data_dir, rel)
        if not os.path.isfile(path):
            problems.append(f"{path} is missing (the manifest lists it)")
        elif size is not None and os.path.getsize(path) != size:
            problems.append(f"{path} holds {os.path.getsize(path):,} bytes, the manifest says {size:,}")
        elif hashes and sha is not None and file_sha256(path) != sha:
            problems.append(f"{path} has another sha256 than the manifest lists (its bytes changed)")
    return problems
