"""decode_image on a malformed-image corpus generated in code, plus modes and EXIF orientations."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from service.errors import InvalidImage, UnsupportedMediaType
from service.images.decode import decode_image, to_rgb


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _gradient(w: int = 40, h: int = 30) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.uint8)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.uint8)[:, None].repeat(w, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], axis=2))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims width x height (a pixel bomb: the header is all we should read)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _gif_with_huge_later_frame() -> bytes:
    """A valid 20x20 first frame followed by a frame whose image descriptor claims 60000x60000."""
    first = _save(Image.new("P", (20, 20), 3), "GIF")
    body = first[:-1]  # drop trailer 0x3B
    descriptor = b"\x2c" + struct.pack("<HHHH", 0, 0, 60000, 60000) + b"\x00"
    return body + descriptor + b"\x08\x02\x4c\x01\x00" + b"\x3b"


@pytest.fixture
def s(settings_factory):
    return settings_factory(max_image_pixels=4_000_000, max_image_side=4096)


def test_rgb_jpeg_roundtrip_and_sha(s) -> None:
    data = _save(_gradient(), "PNG")
    out = decode_image(data, s)
    assert (out.width, out.height, out.format) == (40, 30, "PNG")
    assert out.rgb.dtype == np.uint8 and out.rgb.shape == (30, 40, 3) and out.rgb.flags.c_contiguous
    np.testing.assert_array_equal(out.rgb, np.asarray(_gradient()))
    import hashlib

    assert out.sha256 == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    "data, error",
    [
        (b"", InvalidImage),
        (bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), UnsupportedMediaType),
        (b"%PDF-1.4\n1 0 obj<<>>endobj\n", UnsupportedMediaType),
        (b"8BPS\x00\x01" + b"\x00" * 64, UnsupportedMediaType),  # PSD: not on the allow-list
        (b"\xff\xd8\xff\xe0garbage", InvalidImage),  # JPEG magic, corrupt header
    ],
    ids=["zero-byte", "random-bytes", "pdf", "psd", "jpeg-magic-garbage"],
)
def test_garbage_is_rejected(s, data: bytes, error: type) -> None:
    with pytest.raises(error):
        decode_image(data, s)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_images_are_rejected(s, fmt: str) -> None:
    rng = np.random.default_rng(1)
    noisy = Image.fromarray(rng.integers(0, 256, (200, 200, 3), dtype=np.uint8))
    data = _save(noisy, fmt)
    with pytest.raises(InvalidImage):
        decode_image(data[: len(data) // 2], s)


def test_disallowed_format_is_415_even_if_valid(settings_factory) -> None:
    data = _save(_gradient(), "PNG")
    with pytest.raises(UnsupportedMediaType):
        decode_image(data, settings_factory(allowed_formats=["JPEG"]))


@pytest.mark.parametrize("size", [(1, 100000), (100000, 1), (1, 1), (5, 40), (20000, 20)])
def test_degenerate_sizes_are_422(s, size: tuple[int, int]) -> None:
    w, h = size
    data = _png_claiming(w, h)
    with pytest.raises(InvalidImage):
        decode_image(data, s)


def test_pixel_bomb_png_is_rejected_from_header(s) -> None:
    with pytest.raises(InvalidImage, match="pixels|longest side"):
        decode_image(_png_claiming(60000, 60000), s)
    with pytest.raises(InvalidImage, match="pixels"):
        decode_image(_png_claiming(4000, 3000), s)  # under max side, over the pixel cap


def test_bomb_warning_is_an_error(s) -> None:
    """If our cap is configured above Pillow's, Pillow's bomb warning still rejects the image."""
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 1000
    try:
        with pytest.raises(InvalidImage, match="bomb"):
            decode_image(_save(_gradient(40, 30), "PNG"), s)  # 1200 px > 1000: warning -> error
    finally:
        Image.MAX_IMAGE_PIXELS = old


def test_gif_bomb_in_later_frame_decodes_first_frame_only(s) -> None:
    out = decode_image(_gif_with_huge_later_frame(), s)
    assert (out.width, out.height) == (20, 20)


def test_animated_gif_gives_first_frame(s) -> None:
    frames = [Image.new("RGB", (32, 24), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    out = decode_image(buf.getvalue(), s)
    assert out.rgb.shape == (24, 32, 3)
    assert tuple(out.rgb[5, 5]) == (255, 0, 0)


def test_cmyk_jpeg(s) -> None:
    im = Image.new("CMYK", (30, 20), (0, 255, 255, 0))  # pure red in CMYK
    out = decode_image(_save(im, "JPEG", quality=100), s)
    r, g, b = out.rgb[10, 15].astype(int)
    assert r > 200 and g < 60 and b < 60


def test_16bit_png_scaled_to_8bit(s) -> None:
    values = np.array([[0, 257 * 100, 65535, 257 * 200]] * 8, dtype=np.uint16).repeat(4, axis=1)
    im = Image.fromarray(values)  # mode I;16
    assert im.mode.startswith("I;16")
    out = decode_image(_save(im, "PNG"), s)
    assert out.rgb.shape == (8, 16, 3)
    np.testing.assert_array_equal(out.rgb[0, ::4, 0], [0, 100, 255, 200])
    assert np.all(out.rgb[..., 0] == out.rgb[..., 2])


@pytest.mark.parametrize("mode", ["I", "F", "1", "L"])
def test_other_modes_to_rgb(mode: str) -> None:
    base = np.tile(np.arange(0, 200, 10, dtype=np.float64)[None], (8, 1))
    im = (
        Image.fromarray(base.astype(np.float32), mode="F").convert(mode)
        if mode != "F"
        else Image.fromarray(base.astype(np.float32), mode="F")
    )
    rgb = to_rgb(im)
    assert rgb.dtype == np.uint8 and rgb.shape == (8, 20, 3)
    np.testing.assert_array_equal(rgb, to_rgb(im))  # deterministic
    if mode == "F":
        np.testing.assert_array_equal(rgb[0, :, 0], base[0].astype(np.uint8))


def test_palette_with_transparency_composited_on_white(s) -> None:
    im = Image.new("P", (16, 16), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    im.paste(1, (0, 0, 8, 16))
    im.info["transparency"] = 0
    out = decode_image(_save(im, "PNG", transparency=0), s)
    assert tuple(out.rgb[4, 2]) == (255, 0, 0)
    assert tuple(out.rgb[4, 12]) == (255, 255, 255)


def test_la_and_rgba(s) -> None:
    la = Image.fromarray(
        np.stack([np.full((10, 10), 100, np.uint8), np.full((10, 10), 0, np.uint8)], 2), "LA"
    )
    assert tuple(decode_image(_save(la, "PNG"), s).rgb[0, 0]) == (255, 255, 255)
    rgba = Image.new("RGBA", (10, 10), (10, 20, 30, 255))
    assert tuple(decode_image(_save(rgba, "PNG"), s).rgb[0, 0]) == (10, 20, 30)


# EXIF orientation -> the transform that makes the stored image look upright
_ORIENT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@pytest.mark.parametrize("orientation", range(2, 9))
def test_exif_orientation_applied(s, orientation: int) -> None:
    stored = _gradient(48, 32)
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = decode_image(_save(stored, "PNG", exif=exif), s)
    expected = np.asarray(stored.transpose(_ORIENT[orientation]))
    assert out.rgb.shape == expected.shape
    np.testing.assert_array_equal(out.rgb, expected)
    assert (out.height, out.width) == expected.shape[:2]


def test_malformed_exif_is_ignored(s, caplog) -> None:
    stored = _gradient(48, 32)
    bad_exif = b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\x00\x05\x01\x12\xff\xff"  # truncated IFD
    data = _save(stored, "JPEG", quality=95, exif=bad_exif)
    out = decode_image(data, s)
    assert out.rgb.shape == (32, 48, 3)


def _png_with(chunk_edit) -> bytes:
    import struct
    import zlib

    data = bytearray(png_of(Image.new("RGB", (20, 20))))
    chunk_edit(data, struct, zlib)
    return bytes(data)


def png_of(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "name",
    ["bad_ihdr_crc", "ihdr_width_0", "truncated_jpeg_header", "gif_signature_only"],
)
def test_corrupt_file_of_a_known_format_is_422(s, name: str) -> None:
    def bad_crc(data, struct, zlib):
        data[29] ^= 0xFF  # IHDR CRC

    def width_0(data, struct, zlib):
        data[16:20] = struct.pack(">I", 0)
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # valid CRC, invalid header

    buf = io.BytesIO()
    Image.new("RGB", (20, 20)).save(buf, format="JPEG")
    corpus = {
        "bad_ihdr_crc": _png_with(bad_crc),
        "ihdr_width_0": _png_with(width_0),
        "truncated_jpeg_header": buf.getvalue()[:20],
        "gif_signature_only": b"GIF89a\x01",
    }
    with pytest.raises(InvalidImage, match="corrupt"):
        decode_image(corpus[name], s)


def test_pixel_limit_message_names_the_setting(settings_factory) -> None:
    with pytest.raises(InvalidImage, match="SAMCLIP_MAX_IMAGE_PIXELS"):
        decode_image(png_of(Image.new("L", (100, 100))), settings_factory(max_image_pixels=5000))
