"""Decoding as people expect from their photos: EXIF orientation, 16-bit depth, transparency.

Each test writes its own small image and reads it back through ``decode_chunk``, the
decoding that folder loading (``decode_files``) and the image store both use.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fassl.data.files.decode import decode_chunk, image_pixels
from fassl.data.sources import folder

RED, BLUE = (255, 0, 0), (0, 0, 255)


def decoded(path: Path, size: int) -> np.ndarray:
    """The (H, W, 3) uint8 pixels that folder loading gets from ``path``."""
    [result] = decode_chunk([path], size)
    assert result.pixels is not None, result.error
    return result.pixels.transpose(1, 2, 0)


def near(pixel: np.ndarray, colour: tuple[int, int, int], tol: int = 24) -> bool:
    return bool(np.abs(pixel.astype(int) - colour).max() <= tol)


# ------------------------------------------------------------------- EXIF orientation


def write_rotated_jpeg(path: Path, orientation: int) -> Path:
    """A 64 x 32 (width x height) JPEG, left half red and right half blue as stored,
    tagged to be shown turned by a quarter."""
    stored = np.zeros((32, 64, 3), np.uint8)
    stored[:, :32], stored[:, 32:] = RED, BLUE
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(path, quality=95, exif=exif)
    return path


@pytest.mark.parametrize(("orientation", "top", "bottom"), [(6, RED, BLUE), (8, BLUE, RED)])
def test_exif_orientation_is_applied_before_the_resize(
    tmp_path: Path, orientation: int, top: tuple, bottom: tuple
) -> None:
    # 6: turn clockwise to show (the stored left edge is the top); 8: counter-clockwise.
    photo = write_rotated_jpeg(tmp_path / "phone.jpg", orientation)
    pixels = decoded(photo, 32)  # shown 32 wide x 64 high: centre crop keeps rows 16..48
    assert pixels.shape == (32, 32, 3)
    assert near(pixels[4, 4], top) and near(pixels[4, 28], top)
    assert near(pixels[28, 4], bottom) and near(pixels[28, 28], bottom)


def test_rotated_photos_are_counted_and_in_memory_images_turn_too(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    photo = write_rotated_jpeg(tmp_path / "photos" / "phone.jpg", 6)
    data = folder.load_unlabeled_folder(tmp_path / "photos", 32)
    assert "turned 1 image upright (EXIF orientation)" in data.report
    with Image.open(photo) as img:
        assert np.array_equal(image_pixels(img, 32), data.images[0])


# ----------------------------------------------------------------------- 16-bit images


def write_grey16(path: Path, values: np.ndarray) -> Path:
    Image.fromarray(values.astype(np.uint16)).save(path)
    with Image.open(path) as img:
        assert img.mode == "I;16"  # a 16-bit greyscale PNG, as PIL reads it
    return path


def test_dark_16bit_images_scale_by_bit_depth_not_by_their_brightest_pixel(
    tmp_path: Path,
) -> None:
    dark = np.full((8, 8), 200, np.uint16)
    dark[0, 0] = 255  # no pixel crosses 255
    crossing = dark.copy()
    crossing[7, 7] = 20 * 257  # one pixel crosses 255
    a = decoded(write_grey16(tmp_path / "dark.png", dark), 8)
    b = decoded(write_grey16(tmp_path / "crossing.png", crossing), 8)
    assert (a == 0).all()  # 200 / 65535 of full scale is black, not 200 / 255
    assert np.array_equal(a[:7], b[:7]) and np.array_equal(a[:, :7], b[:, :7])
    assert (b[7, 7] == 20).all()


def test_16bit_levels_map_to_their_high_byte(tmp_path: Path) -> None:
    # 256 k + 255 -> k: the high byte, as PIL reads 16-bit RGB PNGs; the brightest pixel
    # (252 * 256 + 255) stays 252, not 255 as scaling by the brightest pixel would give.
    high = np.arange(64, dtype=np.uint32).reshape(8, 8) * 4
    pixels = decoded(write_grey16(tmp_path / "levels.png", high * 256 + 255), 8)
    assert np.array_equal(pixels, np.repeat(high[:, :, None], 3, axis=2).astype(np.uint8))


def write_rgb16_png(path: Path, rgb: np.ndarray) -> Path:
    """A 16-bit-per-channel RGB PNG, written by hand (PIL writes no such files)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    h, w, _ = rgb.shape
    rows = b"".join(b"\0" + rgb[y].astype(">u2").tobytes() for y in range(h))
    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
    path.write_bytes(png + chunk(b"IEND", b""))
    return path


def test_16bit_grey_and_16bit_rgb_pngs_decode_alike(tmp_path: Path) -> None:
    values = np.full((8, 8), 200, np.uint16)
    values[:4] = 100 * 257
    values[0, 0] = 65535
    grey = decoded(write_grey16(tmp_path / "grey.png", values), 8)
    colour = decoded(write_rgb16_png(tmp_path / "rgb.png", np.repeat(values[:, :, None], 3, 2)), 8)
    assert np.array_equal(grey, colour)
    assert grey[0, 0].tolist() == [255] * 3 and grey[1, 0].tolist() == [100] * 3
    assert grey[7, 7].tolist() == [0] * 3


# ------------------------------------------------------------------------ transparency


def test_rgba_is_composited_onto_black(tmp_path: Path) -> None:
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:, :] = (255, 0, 0, 255)  # opaque red
    rgba[:4, :4] = (0, 255, 0, 0)  # fully transparent, storing green
    rgba[4:, 4:] = (0, 0, 255, 128)  # half-transparent blue
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(path)
    pixels = decoded(path, 8)
    assert pixels[6, 1].tolist() == [255, 0, 0]
    assert pixels[1, 1].tolist() == [0, 0, 0]
    assert pixels[6, 6].tolist() == [0, 0, 128]


def test_transparent_palette_entry_does_not_keep_its_colour(tmp_path: Path) -> None:
    index = np.ones((8, 8), np.uint8)
    index[:4] = 0  # entry 0: green, marked transparent
    img = Image.fromarray(index, "P")
    img.putpalette([0, 255, 0, 255, 0, 0] + [0] * (254 * 3))
    path = tmp_path / "palette.png"
    img.save(path, transparency=0)
    with Image.open(path) as check:
        assert check.mode == "P" and check.info.get("transparency") == 0
    pixels = decoded(path, 8)
    assert (pixels[:4] == 0).all()  # the rule of every transparent pixel: black
    assert (pixels[4:] == RED).all()


def test_grey_with_alpha_follows_the_same_rule(tmp_path: Path) -> None:
    la = np.zeros((8, 8, 2), np.uint8)
    la[:, :] = (200, 255)
    la[:4] = (200, 0)
    path = tmp_path / "la.png"
    Image.fromarray(la, "LA").save(path)
    pixels = decoded(path, 8)
    assert (pixels[:4] == 0).all() and (pixels[4:] == 200).all()
