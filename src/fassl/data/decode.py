"""Decoding image files to uint8 (3, size, size) arrays, and the report lines about it.

Any mode PIL reads becomes 8-bit RGB (16-bit and float images scaled, not clipped); any
size becomes ``size`` x ``size`` (shorter side resized bicubically, then centre-cropped).
A file that cannot be decoded is returned with the reason, never raised, so one bad file
does not stop a folder: ``decode_files`` drops it and names it in the set's report lines.
The in-memory loaders and ``streaming.StreamingImages`` decode through ``decode_chunk``,
so both give identical pixels.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from fassl.errors import DataError, printable

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
MAX_NAMED_FILES = 20  # skipped files named individually in a report line


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


def _conversion(img: Image.Image) -> str | None:
    """Which conversion to RGB an image needs, as a name for the report (None: RGB)."""
    mode = img.mode
    if mode == "RGB":
        return None
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


def _high_depth_to_rgb(img: Image.Image) -> Image.Image:
    """16-bit / 32-bit / float images to 8 bits by scaling, not clipping like convert()."""
    arr = np.asarray(img)
    if arr.dtype.kind == "f":
        arr = arr / max(float(arr.max()), 1.0)  # float images: [0, 1], or [0, max]
    else:
        arr = arr.astype(np.float64) / (65535.0 if arr.max() > 255 else 255.0)
    arr8 = np.clip(np.rint(arr * 255), 0, 255).astype(np.uint8)
    if arr8.ndim == 2:
        arr8 = np.repeat(arr8[:, :, None], 3, axis=2)
    return Image.fromarray(arr8[:, :, :3], "RGB")


def _to_rgb(img: Image.Image, kind: str | None) -> Image.Image:
    if kind is None:
        return img
    if kind == "16-bit":
        return _high_depth_to_rgb(img)
    if kind == "palette" and (img.mode == "PA" or "transparency" in img.info):
        img = img.convert("RGBA")  # a transparent palette entry must not become a colour
    return img.convert("RGB")


def _fit(img: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` (bicubic, antialiased) and centre-crop a square."""
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def image_pixels(img: Image.Image, size: int) -> np.ndarray:
    """Any PIL image as uint8 (3, size, size): converted to RGB as files are (grayscale,
    palette, 16-bit, ...), the shorter side resized to ``size``, centre-cropped."""
    square = _fit(_to_rgb(img, _conversion(img)), size)
    return np.ascontiguousarray(np.asarray(square, dtype=np.uint8).transpose(2, 0, 1))


@dataclass
class Decoded:
    """Outcome of decoding one file: the pixels, or why it was skipped."""

    pixels: np.ndarray | None
    conversion: str | None = None
    resized: bool = False
    error: str = ""


def _decode(path: Path, size: int) -> Decoded:
    try:
        with Image.open(path) as img:
            if img.format == "JPEG":  # let libjpeg decode big photos at 1/2..1/8 scale
                img.draft(None, (size, size))  # never below size on either side
            img.load()  # truncated or corrupt data fails here, not later
            kind = _conversion(img)
            rgb = _to_rgb(img, kind)
            resized = rgb.size != (size, size)
            if resized:
                rgb = _fit(rgb, size)
            pixels = np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        return Decoded(None, error=f"{type(err).__name__}: {err}")
    return Decoded(pixels, kind, resized)


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
    lines = [f"converted {plural(n, f'{k} image')} to RGB" for k, n in sorted(kinds.items())]
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
        raise DataError(
            f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {printable(root)}"
        )
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
