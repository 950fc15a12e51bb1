"""Turn one source image (a file, a file inside a tar, or an in-memory array) into the stored RGB sample, or say why not.

Real datasets contain CMYK, grayscale, palette, 16-bit and alpha images, PNGs named ``.JPEG``, text files in class
folders, truncated and unreadable files. Everything that has a faithful RGB reading is converted; the rest raises
:class:`ImageSkip` with a reason meant for a human, and the converter lists it instead of crashing.

Conversion rules (documented in ``tools/convert_datasets.py --help``):

* the decoder picks the format from the file's content, not its name (a PNG named ``.JPEG`` is fine);
* grayscale, CMYK, YCbCr, palette and 1-bit images are converted with PIL's ``convert("RGB")``;
* 16-bit (and 32-bit integer) images are scaled to 8 bits (``v * 255 / 65535``), not clipped;
* alpha (RGBA, LA, PA, palette with transparency) is composited over white, so transparent areas look as they do in
  a browser instead of exposing whatever colour happens to sit under alpha 0;
* the EXIF orientation is ignored, like torchvision's ``ImageFolder`` and timm do, so pixels match theirs;
* multi-frame files (GIF, TIFF) keep their first frame;
* images larger than ``max_resolution`` on their longer side are shrunk with OpenCV's ``INTER_AREA`` using FFCV's own
  size rule (``RGBImageField``'s ``resizer``), so FFCV's writer never resizes again and both formats hold the same
  pixels.
"""
from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from typing import Optional, Union

import cv2
import numpy as np
from PIL import Image, ImageFile

from .tar_index import TarMember

__all__ = ["ImageSkip", "ImagePolicy", "PreparedImage", "load_rgb", "resize_max", "encode_jpeg", "prepare_image"]

# A truncated file must be reported, not silently padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False

ImageItem = Union[str, TarMember, np.ndarray]

WRITE_MODES = ("jpg", "raw", "smart", "proportion")


class ImageSkip(Exception):
    """Raised for a source image that cannot be converted; ``str(e)`` is the reason shown to the user."""


@dataclass(frozen=True)
class ImagePolicy:
    """How images are stored (written to the manifest as ``image_policy``).

    Args:
        max_resolution: longer side limit in pixels; larger images are shrunk (aspect kept), smaller ones kept.
        jpeg_quality: JPEG quality (1-100) of every stored JPEG (the DALI shards, and FFCV's compressed records).
        write_mode: FFCV storage: ``jpg`` (all JPEG), ``raw`` (all raw pixels), ``proportion`` (JPEG with
            probability ``compress_probability``, decided per sample from its index, so reproducibly), ``smart``
            (JPEG when raw pixels would exceed ``smart_threshold`` bytes). DALI shards always hold JPEG.
        compress_probability: see ``write_mode="proportion"``.
        smart_threshold: see ``write_mode="smart"``.
    """
    max_resolution: int
    jpeg_quality: int = 90
    write_mode: str = "jpg"
    compress_probability: float = 1.0
    smart_threshold: Optional[int] = None

    def __post_init__(self):
        if self.max_resolution < 1:
            raise ValueError(f"--max-resolution must be >= 1, got {self.max_resolution}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"--jpeg-quality must be in 1..100, got {self.jpeg_quality}")
        if self.write_mode not in WRITE_MODES:
            raise ValueError(f"--write-mode must be one of {', '.join(WRITE_MODES)}, got {self.write_mode!r}")
        if not 0.0 <= self.compress_probability <= 1.0:
            raise ValueError(f"--compress-probability must be in [0, 1], got {self.compress_probability}")
        if self.write_mode == "smart" and self.smart_threshold is None:
            raise ValueError("--write-mode smart needs --smart-threshold (bytes of raw pixels above which to compress)")

    def as_dict(self) -> dict:
        d = {"max_resolution": self.max_resolution, "jpeg_quality": self.jpeg_quality,
             "compress_probability": self.compress_probability, "write_mode": self.write_mode}
        if self.smart_threshold is not None:
            d["smart_threshold"] = self.smart_threshold
        return d

    def ffcv_compresses(self, index: int, raw_nbytes: int) -> bool:
        """Whether FFCV stores sample ``index`` as JPEG. Depends only on the policy and the sample, never on
        which worker handled it (FFCV's own ``proportion`` mode draws ``np.random.rand()`` per worker)."""
        if self.write_mode == "jpg":
            return True
        if self.write_mode == "raw":
            return False
        if self.write_mode == "smart":
            return raw_nbytes > self.smart_threshold
        return bool(np.random.default_rng([0x6E65, index]).random() < self.compress_probability)


@dataclass
class PreparedImage:
    """One stored sample: its JPEG bytes (always; DALI needs them) and, when FFCV keeps this one raw, its pixels."""
    jpeg: bytes
    height: int
    width: int
    raw: Optional[np.ndarray] = None


def _to_rgb(img: Image.Image) -> np.ndarray:
    """PIL image of any mode -> uint8 (H, W, 3) array, by the rules in the module docstring."""
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(img).astype(np.float64)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ImageSkip(f"unsupported {mode} image with values outside 0..65535")
        a = np.rint(a * (255.0 / 65535.0)).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if mode == "F":
        raise ImageSkip("floating-point image (mode F): no defined 8-bit range")
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("LA", "PA", "La", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def load_rgb(item: ImageItem) -> np.ndarray:
    """Decode a file or a tar member (by content) or take an array, and return uint8 RGB (H, W, 3); raise ImageSkip
    if impossible."""
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim != 3 or item.shape[2] != 3:
            raise ImageSkip(f"in-memory image must be uint8 (H, W, 3), got {item.dtype} {item.shape}")
        return item
    if isinstance(item, TarMember):
        try:
            data = item.read()
        except EOFError:
            raise ImageSkip("the archive ends inside this file (a truncated download?)") from None
        except OSError as e:
            raise ImageSkip(f"unreadable ({e.strerror or e})") from None
        if not data:
            raise ImageSkip("empty file (0 bytes)")
        return _decode(io.BytesIO(data))
    path = item
    if os.path.isdir(path):
        raise ImageSkip("a directory, not an image file")
    try:
        size = os.path.getsize(path)
    except OSError as e:  # broken symlink, vanished file
        raise ImageSkip(f"unreadable ({e.strerror or e})") from None
    if size == 0:
        raise ImageSkip("empty file (0 bytes)")
    return _decode(path)


def _decode(source) -> np.ndarray:
    """PIL decode of a path or a file object, every failure an ImageSkip with its reason."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                img.load()
                return _to_rgb(img)
    except ImageSkip:
        raise
    except PermissionError as e:
        raise ImageSkip(f"unreadable (permission denied: {e.strerror})") from None
    except Image.UnidentifiedImageError:
        raise ImageSkip("not an image (no image format recognizes its content)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageSkip(f"too large to decode safely ({e})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageSkip(f"truncated or corrupt image ({e})") from None


def resize_max(image: np.ndarray, max_resolution: int) -> np.ndarray:
    """Shrink so that ``max(h, w) <= max_resolution`` exactly as FFCV's ``RGBImageField`` would (INTER_AREA)."""
    h, w = image.shape[:2]
    ratio = max_resolution / max(h, w)
    if ratio >= 1:
        return image
    new_size = (ratio * np.array([w, h])).astype(int)
    new_size = np.maximum(new_size, 1)
    return cv2.resize(image, tuple(int(s) for s in new_size), interpolation=cv2.INTER_AREA)


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """Baseline RGB JPEG via OpenCV with FFCV's own settings, so FFCV and DALI records are byte-identical."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [int(cv2.IMWRITE_JPEG_QUALITY), quality])
    if not ok:
        raise ImageSkip("JPEG encoding failed")
    return buf.tobytes()


def prepare_image(item: ImageItem, index: int, policy: ImagePolicy, keep_raw: bool) -> PreparedImage:
    """Load, convert and resize one image and encode it; ``keep_raw`` asks for the pixels when FFCV stores them raw."""
    rgb = resize_max(load_rgb(item), policy.max_resolution)
    rgb = np.ascontiguousarray(rgb)
    h, w = rgb.shape[:2]
    raw = rgb if keep_raw and not policy.ffcv_compresses(index, rgb.nbytes) else None
    return PreparedImage(jpeg=encode_jpeg(rgb, policy.jpeg_quality), height=h, width=w, raw=raw)
