"""ImageNet's archives read as downloaded, without extracting them.

image-net.org ships ILSVRC2012 as ``ILSVRC2012_img_train.tar`` (138 GB, one ``<wnid>.tar`` per class inside),
``ILSVRC2012_img_val.tar`` (6.3 GB, 50,000 JPEGs) and ``ILSVRC2012_devkit_t12.tar.gz``. Extracting them takes as
much disk again, and hours. Neither image tar is compressed, so every image is one contiguous byte range of the
file on disk: the index below comes from the tar headers alone (tarfile seeks past the data), and a conversion
worker reads an image with one seek and one read.
"""
from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass

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
    with open(path, "rb") as f:
        files, others = _scan(f, path, "", os.path.getsize(path), path)
    return sorted(files, key=lambda m: m.name), others


def index_tar_of_tars(path: str):
    """({class tar's stem: its files sorted by name}, [(name, reason)] for members that are not images) of a tar
    whose members are tars, as ILSVRC2012_img_train.tar is."""
    path = os.path.abspath(path)
    classes, others = {}, []
    outer, outer_others = index_tar(path)
    others += outer_others
    with open(path, "rb") as f:
        for member in outer:
            if not member.name.endswith(".tar"):
                others.append((member.name, "not a class archive (<wnid>.tar)"))
                continue
            f.seek(member.offset)
            files, inner_others = _scan(f, path, member.name + "/", member.offset + member.size,
                                        f"{path}: {member.name}")
            classes[os.path.basename(member.name)[:-len(".tar")]] = sorted(files, key=lambda m: m.name)
            others += inner_others
    return classes, others


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
