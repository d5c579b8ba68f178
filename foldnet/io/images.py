"""Read, validate and re-encode one image file with Pillow.

These functions run in worker processes of the shard writer, so this module
must never import TensorFlow. Every image is fully decoded (``img.load()``) so
truncated or corrupt files are caught here, not during training.

Output formats: JPEG and PNG bytes that TensorFlow decodes with channels=3 are
kept as they are; anything else (BMP, GIF, PGM, TIFF, WEBP, 16-bit, CMYK...)
is re-encoded as PNG (lossless). With ``max_side`` a larger image is resized so
its longer side is ``max_side`` and re-encoded (JPEG stays JPEG at
``jpeg_quality``, others become PNG).
"""
import io
import multiprocessing
import os
import sys
from typing import NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

THUMB_SIZE = 16
# Largest image accepted (width x height); larger ones are bad images with a clear reason.
DEFAULT_MAX_PIXELS = 100_000_000
# Pillow's own guard only warns up to 2x its limit: ours (max_pixels, checked on the header
# before any pixel is decoded) replaces it.
Image.MAX_IMAGE_PIXELS = None

# Pillow modes whose JPEG / PNG bytes TensorFlow decodes to 3 channels as is.
_KEEP_MODES = {
    "JPEG": {"L", "RGB"},
    "PNG": {"1", "L", "LA", "P", "RGB", "RGBA"},
}
# Errors Pillow raises on unreadable, truncated or corrupt image data.
_DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


class BadImage(Exception):
    """The file is missing, not an image, or corrupt/truncated."""


class EncodedImage(NamedTuple):
    data: bytes  # JPEG or PNG bytes
    height: int
    width: int
    format: str  # "JPEG" or "PNG"
    reencoded: bool


def decode(data, max_side=None, max_pixels=DEFAULT_MAX_PIXELS):
    """Decode ``data`` fully; return (PIL image, source format, target (w, h) or None).

    An image of more than ``max_pixels`` pixels (None: no limit) is refused
    from its header, before its pixels are decoded.

    The target size (None if the image is small enough) has the longer side
    ``max_side``. For a JPEG larger than that the decoder downscales by
    1/2..1/8 while decoding (draft mode: much faster, and the whole file is
    still read, so truncation is caught); the result is at least the target
    size. Raises BadImage.
    """
    try:
        img = Image.open(io.BytesIO(data))
        fmt = img.format
        if max_pixels and img.width * img.height > max_pixels:
            raise BadImage(f"{img.width}x{img.height} = {img.width * img.height / 1e6:.0f} MP is more than "
                           f"--max_pixels {max_pixels} ({max_pixels / 1e6:g} MP); raise --max_pixels if it is meant")
        size = target_size(img.width, img.height, max_side)
        size = None if size == img.size else size
        if fmt == "JPEG" and size is not None:
            img.draft(None, size)
        img.load()
    except _DECODE_ERRORS as e:
        raise BadImage(f"cannot decode image ({type(e).__name__}: {e})") from e
    return img, fmt, size


def target_size(width, height, max_side):
    """(width, height) scaled so the longer side is at most ``max_side``."""
    if not max_side or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def to_8bit(img, for_jpeg):
    """Convert ``img`` to a mode the JPEG/PNG encoder writes with 8 bits per channel."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return Image.fromarray((np.asarray(img, dtype=np.uint32) // 257).astype(np.uint8))
    if img.mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if arr.max(initial=0) > 255:
            arr = arr / 257.0
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode == "1":
        img = img.convert("L")
    elif img.mode not in ("L", "LA", "RGB", "RGBA"):
        img = img.convert("RGB")  # CMYK, YCbCr, LAB, HSV, PA...
    if for_jpeg and img.mode in ("LA", "RGBA"):
        img = img.convert(img.mode[:-1])
    return img


def encode(img, fmt, jpeg_quality):
    """Encode a PIL image as JPEG (``fmt == "JPEG"``) or PNG; return bytes."""
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.save(buf, format="JPEG", quality=int(jpeg_quality))
    else:
        img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def read_file(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise BadImage(f"cannot read file ({e.strerror or e})") from e


def load_image(path, max_side=None, jpeg_quality=95, max_pixels=DEFAULT_MAX_PIXELS):
    """Read ``path``, validate it and return an EncodedImage. Raises BadImage."""
    data = read_file(path)
    img, fmt, size = decode(data, max_side, max_pixels)
    if size is None and img.mode in _KEEP_MODES.get(fmt, ()):
        return EncodedImage(data, img.height, img.width, fmt, False)
    # A resized JPEG stays JPEG; anything else re-encoded (CMYK JPEG, BMP, GIF...) becomes lossless PNG.
    out_fmt = "JPEG" if fmt == "JPEG" and size is not None else "PNG"
    img = to_8bit(img, for_jpeg=out_fmt == "JPEG")
    if size is not None and size != img.size:
        img = img.resize(size, Image.LANCZOS)
    return EncodedImage(encode(img, out_fmt, jpeg_quality), img.height, img.width, out_fmt, True)


def thumbnail(path, max_pixels=DEFAULT_MAX_PIXELS):
    """A mean-centred, unit-norm float32 vector of the 16x16 grayscale image. Raises BadImage."""
    img, _, _ = decode(read_file(path), max_side=4 * THUMB_SIZE, max_pixels=max_pixels)  # only the draft speed-up matters
    small = to_8bit(img, for_jpeg=True).convert("L").resize((THUMB_SIZE, THUMB_SIZE), Image.BOX)
    v = np.asarray(small, dtype=np.float32).ravel()
    v -= v.mean()
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v


# ---------------------------------------------------------------- worker processes


def encode_task(args):
    """Worker entry: (path, max_side, jpeg_quality[, max_pixels]) -> (True, EncodedImage) or (False, reason)."""
    path, max_side, jpeg_quality, *rest = args
    try:
        return True, load_image(path, max_side, jpeg_quality, *rest)
    except BadImage as e:
        return False, str(e)


def thumb_task(args):
    """Worker entry: path or (path, max_pixels) -> (True, thumbnail vector) or (False, reason)."""
    path, *rest = (args,) if isinstance(args, str) else args
    try:
        return True, thumbnail(path, *rest)
    except BadImage as e:
        return False, str(e)


def check_task(args):
    """Worker entry: (path, max_pixels) -> (True, None) if the image decodes fully, else (False, reason)."""
    path, max_pixels = args
    try:
        decode(read_file(path), max_pixels=max_pixels)
        return True, None
    except BadImage as e:
        return False, str(e)


def map_images(fn, items, workers, desc, progress=True):
    """Yield ``fn(item)`` in order, computed by ``workers`` spawned processes
    (in this process if workers <= 1), with a tqdm progress bar on stderr.

    Spawned (not forked) workers: the parent has TensorFlow's threads running,
    and forking those is unsafe; workers import only this module.
    """
    items = list(items)
    bar = tqdm(total=len(items), desc=desc, unit="img", file=sys.stderr, disable=not progress, smoothing=0.05)
    with bar:
        if workers <= 1 or len(items) <= 1:
            for item in items:
                yield fn(item)
                bar.update()
            return
        ctx = multiprocessing.get_context("spawn")
        chunksize = max(1, min(8, len(items) // (8 * workers)))
        with ctx.Pool(min(workers, len(items))) as pool:
            for result in pool.imap(fn, items, chunksize=chunksize):
                yield result
                bar.update()


def default_workers():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
