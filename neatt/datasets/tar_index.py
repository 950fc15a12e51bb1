"""ImageNet's archives read as downloaded, without extracting them.

image-net.org ships ILSVRC2012 as ``ILSVRC2012_img_train.tar`` (138 GB, one ``<wnid>.tar`` per class inside),
``ILSVRC2012_img_val.tar`` (6.3 GB, 50,000 JPEGs) and ``ILSVRC2012_devkit_t12.tar.gz``. Extracting them takes as
much disk again, and hours. Neither image tar is compressed, so every image is one contiguous byte range of the
file on disk: the index below comes from the tar headers alone (tarfile seeks past the data), and a conversion
worker reads an image with one seek and one read.

Reading the train tar's 1.28 M headers takes minutes, so an index is cached (``$NEATT_CACHE_DIR``, default
``$XDG_CACHE_HOME/neatt`` or ``~/.cache/neatt``; an empty ``NEATT_CACHE_DIR`` turns the cache off) under a key of
the archive's absolute path, size and modification time: a rerun, or the next split's run, reads it back in
seconds, and a changed archive is indexed again.
"""
from __future__ import annotations

import hashlib
import json
import os
import tarfile
from dataclasses import dataclass
from typing import Optional

import numpy as np

__all__ = ["TarMember", "ArchiveError", "index_tar", "index_tar_of_tars", "read_small_member"]


class ArchiveError(Exception):
    """The archive cannot be indexed (not a tar, compressed, or cut short); ``str(e)`` names it."""


@dataclass(frozen=True)
class TarMember:
    """One file inside an uncompressed tar: ``name`` is its path there (inside a class tar:
    ``n01440764.tar/n01440764_10026.JPEG``); its bytes are ``size`` bytes at ``offset`` of ``archive``."""
    archive: str
    name: str
    offset: int
    size: int

    def read(self) -> bytes:
        """The member's bytes; EOFError if the file on disk ends before them."""
        with open(self.archive, "rb") as f:
            f.seek(self.offset)
            data = f.read(self.size)
        if len(data) != self.size:
            raise EOFError(f"{self.archive} ends {self.size - len(data)} bytes into {self.name}")
        return data


def _kind(info: tarfile.TarInfo) -> str:
    if info.isdir():
        return "a directory, not an image file"
    if info.issym() or info.islnk():
        return "a link, not an image file (links inside an archive are not followed)"
    return "not a regular file"


def _scan(f, archive: str, prefix: str, end: int, what: str):
    """(regular files, [(name, reason)] for the other members) of the tar that starts at ``f``'s position and must
    end by byte ``end`` of ``archive``. tarfile's offsets are positions in ``f``, so a class tar's members come out
    as ranges of the outer file."""
    try:
        tar = tarfile.open(fileobj=f, mode="r:")
        infos = list(tar)  # headers only: tarfile seeks past each member's data
    except tarfile.TarError as e:
        if str(e) == "unexpected end of data":  # tarfile's words for a member that runs past the end of the file
            raise ArchiveError(f"{what} is cut short: a member's data runs past the end of the file") from None
        raise ArchiveError(f"{what} is not an uncompressed tar archive ({e})") from None
    f.seek(tar.offset)  # just past the last member: a whole tar has its end-of-archive (zero) block here
    if tar.offset + tarfile.BLOCKSIZE > end or f.read(tarfile.BLOCKSIZE) != bytes(tarfile.BLOCKSIZE):
        raise ArchiveError(f"{what} is cut short: it ends without the end-of-archive block")
    files, others = [], []
    for info in infos:
        if info.offset_data + info.size > end:
            raise ArchiveError(f"{what} is cut short: it ends inside {prefix}{info.name}, which needs "
                               f"{info.offset_data + info.size - end} more bytes")
        if info.isfile():
            files.append(TarMember(archive, prefix + info.name, info.offset_data, info.size))
        else:
            others.append((prefix + info.name, _kind(info)))
    return files, others


def index_tar(path: str):
    """(regular files sorted by name, [(name, reason)] for the other members) of an uncompressed tar."""
    path = os.path.abspath(path)
    cached = _load_index(path, "tar")
    if cached is not None:
        return cached[0][""], cached[1]
    with open(path, "rb") as f:
        files, others = _scan(f, path, "", os.path.getsize(path), path)
    files = sorted(files, key=lambda m: m.name)
    _save_index(path, "tar", {"": files}, others)
    return files, others


def index_tar_of_tars(path: str):
    """({class tar's stem: its files sorted by name}, [(name, reason)] for members that are not images) of a tar
    whose members are tars, as ILSVRC2012_img_train.tar is."""
    path = os.path.abspath(path)
    cached = _load_index(path, "tar_of_tars")
    if cached is not None:
        return cached
    classes = {}
    with open(path, "rb") as f:
        outer, others = _scan(f, path, "", os.path.getsize(path), path)
        for member in sorted(outer, key=lambda m: m.name):
            if not member.name.endswith(".tar"):
                others.append((member.name, "not a class archive (<wnid>.tar)"))
                continue
            f.seek(member.offset)
            files, inner_others = _scan(f, path, member.name + "/", member.offset + member.size,
                                        f"{path}: {member.name}")
            classes[os.path.basename(member.name)[:-len(".tar")]] = sorted(files, key=lambda m: m.name)
            others += inner_others
    _save_index(path, "tar_of_tars", classes, others)
    return classes, others


_CACHE_VERSION = 1


def _cache_file(path: str, kind: str) -> Optional[tuple]:
    """(cache file, the key it must hold) for an archive, or None when the cache is off."""
    root = os.environ.get("NEATT_CACHE_DIR")
    if root is None:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "neatt")
    if not root:
        return None
    st = os.stat(path)
    key = {"version": _CACHE_VERSION, "kind": kind, "path": path, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return os.path.join(root, "tar-index", f"{name}.npz"), key


def _json_bytes(obj) -> np.ndarray:
    return np.frombuffer(json.dumps(obj).encode(), np.uint8)


def _save_index(path: str, kind: str, groups: dict, others: list) -> None:
    """Cache ``groups`` ({name: [TarMember]}) and ``others``; a cache that cannot be written is left out."""
    where = _cache_file(path, kind)
    if where is None:
        return
    cache, key = where
    members = [m for files in groups.values() for m in files]
    tmp = f"{cache}.tmp-{os.getpid()}.npz"
    try:
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        np.savez(tmp, key=_json_bytes(key), others=_json_bytes(others),
                 groups=_json_bytes([[name, len(files)] for name, files in groups.items()]),
                 names=np.frombuffer("\0".join(m.name for m in members).encode(), np.uint8),
                 offsets=np.array([m.offset for m in members], np.int64),
                 sizes=np.array([m.size for m in members], np.int64))
        os.replace(tmp, cache)
    except OSError:
        if os.path.exists(tmp):
            os.remove(tmp)


def _load_index(path: str, kind: str) -> Optional[tuple]:
    """(groups, others) as saved for this very archive (same path, size and time), else None."""
    where = _cache_file(path, kind)
    if where is None or not os.path.isfile(where[0]):
        return None
    try:
        with np.load(where[0]) as z:
            if json.loads(z["key"].tobytes()) != where[1]:
                return None
            names = z["names"].tobytes().decode().split("\0") if z["names"].size else []
            offsets, sizes = z["offsets"].tolist(), z["sizes"].tolist()
            groups, others = json.loads(z["groups"].tobytes()), json.loads(z["others"].tobytes())
    except (OSError, ValueError, KeyError):  # unreadable or from another version: index again
        return None
    members = [TarMember(path, *row) for row in zip(names, offsets, sizes)]
    out, start = {}, 0
    for name, count in groups:
        out[name] = members[start:start + count]
        start += count
    return out, [tuple(o) for o in others]


def read_small_member(path: str, suffix: str) -> bytes:
    """The bytes of the first member of a (possibly compressed) tar whose name ends with ``suffix``."""
    try:
        with tarfile.open(path) as tar:
            for info in tar:
                if info.isfile() and info.name.endswith(suffix):
                    return tar.extractfile(info).read()
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ArchiveError(f"{path} cannot be read as a tar archive ({e})") from None
    raise ArchiveError(f"{path} holds no member ending with {suffix}")
