"""Decoding image files to uint8 (3, size, size) arrays, and the report lines about it.

Every image is first turned upright by its EXIF orientation (phone photos store it as a
tag). Any mode PIL reads then becomes 8-bit RGB: 16-bit images by their bit depth (the high
byte, 0..65535 -> 0..255, as PIL reads 16-bit RGB PNGs; never by their brightest pixel),
float images scaled from [0, 1] (or [0, max] above 1), and transparency (an alpha channel,
or a transparent palette entry or colour) composited onto black: a fully transparent pixel
is black whatever colour it stores, a half-transparent one is darkened in proportion. Any
size becomes ``size`` x ``size`` (shorter side resized bicubically, then centre-cropped).
A file that cannot be decoded is returned with the reason, never raised, so one bad file
does not stop a folder: ``decode_files`` drops it and names it in the set's report lines.
The in-memory loaders and the image store (``store``) decode through ``decode_chunk``,
so both give identical pixels.
"""

from __future__ import annotations

import os
import struct
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps

from fassl.errors import DataError, printable

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
MAX_NAMED_FILES = 20  # skipped files named individually in a report line
BACKGROUND = (0, 0, 0)  # what transparent pixels are composited onto (see the module doc)
ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "PA"})
# Reading EXIF can fail in many ways on a damaged tag; the pixels are still good.
EXIF_ERRORS = (OSError, ValueError, KeyError, TypeError, SyntaxError, struct.error)


@dataclass
class ImageSet:
    """Decoded images: uint8 (N, 3, H, W), int64 labels (N,) with -1 for unlabeled."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    report: list[str] = field(default_factory=list)
    # Each image's file relative to the folder it was loaded from, where there is one
    # (folder loaders; empty for CIFAR, digits and cached sets).
    paths: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.images.shape[0])


def _transparent(img: Image.Image) -> bool:
    """Whether some pixels may be (partly) transparent: an alpha band, or a transparent
    palette entry or colour key (``transparency`` in the file's info)."""
    return img.mode in ALPHA_MODES or "transparency" in img.info


def _conversion(img: Image.Image) -> str | None:
    """Which conversion to RGB an image needs, as a name for the report (None: RGB)."""
    mode = img.mode
    if mode == "RGB":
        return "RGBA" if _transparent(img) else None
    if mode in ("L", "1", "LA"):
        return "grayscale"
    if mode in ("RGBA", "RGBa", "RGBX"):
        return "RGBA"
    if mode in ("P", "PA"):
        return "palette"
    if mode.startswith("I") or mode == "F" or mode.startswith("RGB;16"):
        return "16-bit"
    if mode == "CMYK":
        return "CMYK"
    return mode


def _integer_to_8bit(arr: np.ndarray) -> np.ndarray:
    """Integer pixels to 8 bits by their bit depth, never by their brightest pixel: the high
    byte of 16-bit data; mode "I" holding values above 65535 is read as 31-bit."""
    values = np.clip(arr.astype(np.int64), 0, None)
    shift = 8 if arr.itemsize <= 2 or values.max(initial=0) <= 0xFFFF else 23
    return np.minimum(values >> shift, 255).astype(np.uint8)


def _high_depth_to_rgb(img: Image.Image) -> Image.Image:
    """16-bit / 32-bit / float images to 8 bits by scaling, not clipping like convert()."""
    arr = np.asarray(img)
    if arr.dtype.kind == "f":
        scaled = arr / max(float(arr.max()), 1.0)  # float images: [0, 1], or [0, max]
        arr8 = np.clip(np.rint(scaled * 255), 0, 255).astype(np.uint8)
    else:
        arr8 = _integer_to_8bit(arr)
    if arr8.ndim == 2:
        arr8 = np.repeat(arr8[:, :, None], 3, axis=2)
    return Image.fromarray(np.ascontiguousarray(arr8[:, :, :3]), "RGB")


def _flatten(img: Image.Image) -> Image.Image:
    """Composite a (partly) transparent image onto BACKGROUND: a transparent pixel must not
    keep the colour it stores (often arbitrary, e.g. a GIF's unused palette entry)."""
    rgba = img.convert("RGBA")
    base = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
    return Image.alpha_composite(base, rgba).convert("RGB")


def _to_rgb(img: Image.Image, kind: str | None) -> Image.Image:
    if kind is None:
        return img
    if kind == "16-bit":
        return _high_depth_to_rgb(img)
    if _transparent(img):
        return _flatten(img)
    return img.convert("RGB")


def _upright(img: Image.Image) -> tuple[Image.Image, bool]:
    """``img`` turned as its EXIF orientation says, and whether it was turned; an image
    whose EXIF cannot be read is kept as stored."""
    try:
        orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
        if orientation not in range(2, 9):  # 1: as stored; other values are not orientations
            return img, False
        return ImageOps.exif_transpose(img), True
    except EXIF_ERRORS:
        return img, False


def _fit(img: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` (bicubic, antialiased) and centre-crop a square."""
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def image_pixels(img: Image.Image, size: int) -> np.ndarray:
    """Any PIL image as uint8 (3, size, size): turned upright and converted to RGB as files
    are (grayscale, palette, 16-bit, transparency, ...), the shorter side resized to
    ``size``, centre-cropped."""
    img, _ = _upright(img)
    square = _fit(_to_rgb(img, _conversion(img)), size)
    return np.ascontiguousarray(np.asarray(square, dtype=np.uint8).transpose(2, 0, 1))


@dataclass
class Decoded:
    """Outcome of decoding one file: the pixels, or why it was skipped."""

    pixels: np.ndarray | None
    conversion: str | None = None
    resized: bool = False
    error: str = ""
    rotated: bool = False  # turned upright by its EXIF orientation


def _decode(path: Path, size: int) -> Decoded:
    try:
        with Image.open(path) as img:
            if img.format == "JPEG":  # let libjpeg decode big photos at 1/2..1/8 scale
                img.draft(None, (size, size))  # never below size on either side
            img.load()  # truncated or corrupt data fails here, not later
            upright, rotated = _upright(img)  # before any resize or conversion
            kind = _conversion(upright)
            rgb = _to_rgb(upright, kind)
            resized = rgb.size != (size, size)
            if resized:
                rgb = _fit(rgb, size)
            pixels = np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        return Decoded(None, error=f"{type(err).__name__}: {err}")
    return Decoded(pixels, kind, resized, rotated=rotated)


def decode_chunk(paths: Sequence[str | Path], size: int) -> list[Decoded]:
    """Decode ``paths`` in order (module level, so worker processes can run it)."""
    return [_decode(Path(p), size) for p in paths]


def _decode_images(paths: Sequence[Path], size: int, workers: int = 0) -> list[Decoded]:
    """Decode in chunks on a thread pool (PIL releases the GIL while decoding large images)."""
    if not paths:
        return []
    workers = workers or min(4, os.cpu_count() or 1)
    chunk = 256
    chunks = [paths[i : i + chunk] for i in range(0, len(paths), chunk)]
    if workers == 1 or len(chunks) == 1:
        return [d for c in chunks for d in decode_chunk(c, size)]
    with ThreadPoolExecutor(workers) as pool:
        return [d for part in pool.map(decode_chunk, chunks, [size] * len(chunks)) for d in part]


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def _conversion_lines(decoded: Iterable[Decoded], size: int) -> list[str]:
    kinds = Counter(d.conversion for d in decoded if d.pixels is not None and d.conversion)
    resized = sum(1 for d in decoded if d.pixels is not None and d.resized)
    rotated = sum(1 for d in decoded if d.pixels is not None and d.rotated)
    lines = [f"converted {plural(n, f'{k} image')} to RGB" for k, n in sorted(kinds.items())]
    if rotated:
        lines.append(f"turned {plural(rotated, 'image')} upright (EXIF orientation)")
    if resized:
        lines.append(
            f"resized {plural(resized, 'image')} to {size}x{size} (shorter side, then centre crop)"
        )
    return lines


def _skipped_line(skipped: list[tuple[str, str]], root: Path) -> list[str]:
    if not skipped:
        return []
    named = "; ".join(f"{p} ({why})" for p, why in skipped[:MAX_NAMED_FILES])
    more = len(skipped) - MAX_NAMED_FILES
    tail = f"; and {more:,} more" if more > 0 else ""
    line = f"skipped {plural(len(skipped), 'unreadable image file')} in {root}: {named}{tail}"
    return [printable(line)]


def check_fits_in_memory(n: int, size: int, where: str) -> None:
    """A DataError when ``n`` decoded images of ``size`` px would not fit in this
    machine's memory (twice: decoded images, then the assembled array)."""
    needed = 2 * n * 3 * size * size
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # no sysconf (not POSIX): cannot tell
        return
    if needed > total:
        raise DataError(
            f"{n:,} images at data.image_size={size} from {where} would need "
            f"{needed / 2**30:.1f} GiB decoded, more than this machine's "
            f"{total / 2**30:.1f} GiB: lower data.image_size"
        )


def decode_files(
    root: Path,
    files: list[str],
    labels: list[int],
    classes: list[str],
    size: int,
    report: list[str],
) -> ImageSet:
    """Decode ``files`` (relative to root), drop unreadable ones, assemble the ImageSet.

    Refused before decoding when the decoded images would not fit in memory (they are
    held twice while assembled): ``data.image_size`` names the knob."""
    if not files:
        kinds = ", ".join(sorted(IMAGE_EXTENSIONS))
        skipped = "".join(f"; {line}" for line in report)  # links, caches, other files
        raise DataError(f"no image files ({kinds}) in {printable(root)}{skipped}")
    check_fits_in_memory(len(files), size, printable(root))
    decoded = _decode_images([root / f for f in files], size)
    ok = [i for i, d in enumerate(decoded) if d.pixels is not None]
    skipped = [(files[i], d.error) for i, d in enumerate(decoded) if d.pixels is None]
    if not ok:
        raise DataError(
            printable(
                f"none of the {len(files):,} image files in {root} could be decoded "
                f"(first: {skipped[0][0]}: {skipped[0][1]})"
            )
        )
    images = np.empty((len(ok), 3, size, size), dtype=np.uint8)
    for row, i in enumerate(ok):
        images[row] = decoded[i].pixels
    label_arr = np.asarray([labels[i] for i in ok], dtype=np.int64)
    lines = report + _conversion_lines(decoded, size) + _skipped_line(skipped, root)
    return ImageSet(images, label_arr, classes, lines, [files[i] for i in ok])
