"""File I/O for the command line, safe against bad files and interrupted runs.

Reading. Images are read as RGB uint8, label maps as int64, CAMs and other
arrays from ``.npy`` files. Every reader raises :class:`BadFileError` (a
``ValueError``) naming the file and what is wrong with it, never a traceback
from deep inside Pillow or numpy, and checks what a file's header declares
before reading its data, so a hostile or broken file cannot make it allocate
what the file does not hold:

- an image whose header declares more than ``PIL.Image.MAX_IMAGE_PIXELS``
  pixels (89,478,485 by default) is refused as a possible decompression bomb
  (Pillow only warns up to twice that limit; here it is an error); an empty,
  truncated or unidentified image is refused;
- a ``.npy`` file is refused if it is empty, not a ``.npy`` file (a pickle),
  holds Python objects (it is never unpickled: ``allow_pickle=False``), has the
  wrong dtype or rank, or declares more data than it holds (truncated);
- a CAM (:func:`read_cam`) must in addition be C x h x w with 1 <= C <=
  ``MAX_CAM_CLASSES``, no zero-size side, finite non-negative values.

Writing. Every writer goes through :func:`atomic_write`: the data is written
to a temporary ``.tmp-*`` file beside the destination and renamed over it, so
a reader never sees half a file and an interrupted write leaves nothing
behind: on an exception or ``KeyboardInterrupt`` (SIGINT) the temporary file
is removed, and while a write is in flight SIGTERM raises ``SystemExit(143)``
(128 + SIGTERM, the status a shell reports for it) instead of killing the
process on the spot, so the same clean-up runs. Label maps are palette PNGs
with PASCAL VOC's colours (what VOC evaluation tools and viewers expect).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import secrets
import signal
import struct
import threading
import warnings
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

__all__ = [
    "IMAGE_SUFFIXES", "MAX_CAM_CLASSES", "MAX_LABELS", "VOC_PALETTE", "BadFileError", "atomic_write", "open_image",
    "prepare_output_dir", "read_array", "read_cam", "read_image", "read_label_map", "write_array",
    "write_label_map", "write_overlay",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")

# Label maps are uint8 PNGs: labels 0 .. 255.
MAX_LABELS = 256
# CAM channel c is label c + 1 and 255 is the ignore label, so at most 254 foreground classes.
MAX_CAM_CLASSES = MAX_LABELS - 2

TEMPORARY_PREFIX = ".tmp-"


class BadFileError(ValueError):
    """A file that cannot be used: ``str(error)`` is ``"<path>: <reason>"``;
    ``path`` and ``reason`` are kept apart for reports that list files by name."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = Path(path), reason

    def __reduce__(self):  # picklable with its two arguments (torch.distributed gathers summaries)
        return type(self), (self.path, self.reason)


def _voc_palette(n: int = 256) -> np.ndarray:
    """VOC's colour map: label l gets the bits of l spread over R, G, B."""
    palette = np.zeros((n, 3), dtype=np.uint8)
    for label in range(n):
        value, red, green, blue = label, 0, 0, 0
        for shift in range(7, -1, -1):
            red |= (value & 1) << shift
            green |= ((value >> 1) & 1) << shift
            blue |= ((value >> 2) & 1) << shift
            value >>= 3
        palette[label] = (red, green, blue)
    return palette


VOC_PALETTE: np.ndarray = _voc_palette()


# --- reading ------------------------------------------------------------------------------------------

def _require_nonempty(path: Path) -> None:
    """Refuse a missing, non-regular or zero-byte file with a reason rather than the parser's guess."""
    try:
        size = path.stat().st_size
    except OSError as error:
        raise BadFileError(path, f"cannot read the file ({error.strerror or error})") from None
    if not path.is_file():
        raise BadFileError(path, "not a regular file")
    if size == 0:
        raise BadFileError(path, "empty file (0 bytes)")


# Pillow's own failures on broken data: OSError ("image file is truncated"), SyntaxError ("broken PNG
# file"), EOFError, struct and zlib errors from its decoders, ValueError from a mode conversion.
_PILLOW_ERRORS = (OSError, SyntaxError, EOFError, ValueError, struct.error, zlib.error)


@contextlib.contextmanager
def open_image(path: str | os.PathLike, what: str = "image"):
    """The PIL image of ``path``, opened lazily (its header only, so ``size``
    and ``mode`` cost nothing), with the checks of read_image: an empty file, a
    header over the decompression-bomb limit or an unidentified format raise
    BadFileError, and so does a decoding failure inside the block; ``what``
    names the file's role in the message::

        with open_image(path, "mask") as image:
            width, height = image.size
    """
    from PIL import Image

    path = Path(path)
    _require_nonempty(path)
    with warnings.catch_warnings():
        # Pillow warns between MAX_IMAGE_PIXELS and twice that, and raises above: refuse both.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(path)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise BadFileError(path, _bomb_reason(error, Image.MAX_IMAGE_PIXELS)) from None
        except _PILLOW_ERRORS as error:
            raise BadFileError(path, f"cannot read the {what} ({error})") from None
    try:
        with image:
            yield image
    except BadFileError:
        raise
    except _PILLOW_ERRORS as error:
        raise BadFileError(path, f"cannot read the {what} ({error})") from None


def _bomb_reason(error: Exception, limit: int) -> str:
    # Pillow's message states the declared size as "Image size (N pixels) ..."; say it in our terms.
    declared = re.search(r"\((\d+) pixels\)", str(error))
    size = f"{int(declared[1]):,} pixels" if declared else "more pixels than the limit"
    return (f"its header declares {size}, more than PIL.Image.MAX_IMAGE_PIXELS = {limit:,}: "
            "refused as a possible decompression bomb")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """H x W x 3 uint8 RGB. Raises BadFileError (a ValueError) naming the file
    if it is empty, truncated, not an image, or declares more pixels than
    ``PIL.Image.MAX_IMAGE_PIXELS``."""
    with open_image(path, "image") as image:
        return np.array(image.convert("RGB"))


def read_label_map(path: str | os.PathLike) -> np.ndarray:
    """H x W int64 labels of a palette or grey (8, 16 or 32-bit) PNG; errors as read_image's."""
    with open_image(path, "label map") as image:
        if image.mode not in ("P", "L", "I") and not image.mode.startswith("I;16"):
            raise BadFileError(path, f"a label map must be a palette or grey image, got mode {image.mode}")
        return np.asarray(image).astype(np.int64)


def _read_npy_header(handle, path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, bytes of data declared) from a .npy header, without reading the data."""
    from numpy.lib import format as npy

    try:
        version = npy.read_magic(handle)
        if version == (1, 0):
            shape, _, dtype = npy.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, _, dtype = npy.read_array_header_2_0(handle)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except (ValueError, EOFError, SyntaxError) as error:
        raise BadFileError(path, f"not a .npy array file ({error})") from None
    # Python integers: a hostile shape's product must not wrap around in int64.
    return shape, dtype, math.prod(shape) * dtype.itemsize


_KIND_NAMES = {"b": "bool", "i": "signed integer", "u": "unsigned integer", "f": "floating-point", "c": "complex"}


def read_array(path: str | os.PathLike, *, ndim: int | None = None, kinds: str = "biuf",
               check_shape: Callable[[tuple[int, ...]], None] | None = None) -> np.ndarray:
    """The array of a ``.npy`` file, checked from its header before any data is read.

    Args:
        path: the ``.npy`` file.
        ndim: the rank the array must have (any if None).
        kinds: the numpy dtype kinds accepted ("b" bool, "i" / "u" integers,
            "f" floats, "c" complex); arrays of Python objects are never
            accepted, since reading them would unpickle the file.
        check_shape: called with the declared shape before the data is read;
            raises ValueError with the reason to refuse it.

    Raises:
        BadFileError (a ValueError) naming the file: empty, not a ``.npy`` file,
        objects, wrong dtype or rank, refused shape, or truncated.
    """
    path = Path(path)
    _require_nonempty(path)
    with open(path, "rb") as handle:
        shape, dtype, declared = _read_npy_header(handle, path)
        if dtype.hasobject:
            raise BadFileError(path, "the array holds Python objects (pickled data), which are never loaded")
        if dtype.kind not in kinds or dtype.fields is not None:
            expected = " or ".join(_KIND_NAMES.get(kind, repr(kind)) for kind in kinds)
            raise BadFileError(path, f"dtype {dtype} is not accepted: expected {expected} data")
        if ndim is not None and len(shape) != ndim:
            raise BadFileError(path, f"expected a {ndim}-d array, got shape {shape}")
        if check_shape is not None:
            try:
                check_shape(shape)
            except ValueError as error:
                raise BadFileError(path, str(error)) from None
        held = path.stat().st_size - handle.tell()
        if held < declared:
            raise BadFileError(path, f"truncated: its header declares {dtype} {shape} ({declared:,} bytes of "
                                     f"data) but {held:,} bytes follow")
        handle.seek(0)
        try:
            return np.lib.format.read_array(handle, allow_pickle=False)
        except (ValueError, OSError) as error:
            raise BadFileError(path, f"cannot read the array ({error})") from None


def _check_cam_shape(shape: tuple[int, ...]) -> None:
    classes, height, width = shape
    if not 1 <= classes <= MAX_CAM_CLASSES:
        raise ValueError(f"a CAM has 1 to {MAX_CAM_CLASSES} class channels (labels are uint8), got {classes} "
                         f"in shape {shape}")
    if height < 1 or width < 1:
        raise ValueError(f"a CAM must have no zero-size side, got shape {shape}")
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and height * width > limit:
        raise ValueError(f"a CAM of {height} x {width} = {height * width:,} pixels is larger than any image read "
                         f"(PIL.Image.MAX_IMAGE_PIXELS = {limit:,})")


def read_cam(path: str | os.PathLike) -> np.ndarray:
    """C x h x w float32 CAMs of a ``.npy`` file: numeric (bool excluded),
    1 <= C <= MAX_CAM_CLASSES, h and w >= 1 and h * w at most
    ``PIL.Image.MAX_IMAGE_PIXELS``, finite and non-negative. Raises
    BadFileError (a ValueError) naming the file otherwise (see read_array)."""
    cam = read_array(path, ndim=3, kinds="iuf", check_shape=_check_cam_shape)
    cam = np.ascontiguousarray(cam, dtype=np.float32)
    if not np.isfinite(cam).all() or (cam < 0).any():
        raise BadFileError(path, "a CAM must hold finite, non-negative values")
    return cam


# --- writing ------------------------------------------------------------------------------------------

def _raise_exit_on_terminate(signum, frame):
    # One shot: a second SIGTERM during the clean-up must not cut it short.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _terminate_raises() -> Iterator[None]:
    """While in the block, SIGTERM raises SystemExit(143) rather than ending the
    process at once, so `finally` blocks run. Only where the process has
    Python's default (SIG_DFL) for SIGTERM and only from the main thread (the
    one Python runs handlers in): a program's own handler is left alone, and
    nested writes keep the outer one's."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield
        return
    signal.signal(signal.SIGTERM, _raise_exit_on_terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _create_temporary(folder: Path, suffix: str) -> Path:
    """A new empty file ``.tmp-<random><suffix>`` in ``folder``. Unlike
    tempfile.mkstemp's mode 0600, its mode follows the umask, as the renamed
    result should."""
    for _ in range(100):
        candidate = folder / f"{TEMPORARY_PREFIX}{secrets.token_hex(8)}{suffix}"
        try:
            os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return candidate
        except FileExistsError:
            continue
    raise FileExistsError(f"{folder}: no free temporary file name after 100 tries")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; on leaving the block
    it is renamed over ``path`` (os.replace: atomic on one file system). On an
    exception, KeyboardInterrupt or SIGTERM (see the module docstring) the
    temporary file is removed and ``path`` is left as it was. The temporary
    file keeps ``path``'s suffix, so writers that pick the format from it work::

        with atomic_write("out/mask.png") as temporary:
            image.save(temporary)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _terminate_raises():
        temporary = _create_temporary(path.parent, path.suffix)
        try:
            yield temporary
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise


def prepare_output_dir(path: str | os.PathLike, argument: str = "--out") -> Path:
    """Create the output folder if needed and check that files can be written
    in it (by creating and removing one), before any work is done. Raises
    ValueError naming ``argument`` and the folder otherwise."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{argument} {path}: exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        _create_temporary(path, "").unlink()
    except OSError as error:
        raise ValueError(f"{argument} {path}: cannot write files in it ({error.strerror or error})") from None
    return path


def write_array(path: str | os.PathLike, array) -> None:
    """Save a numeric array as ``.npy`` (never pickled), atomically."""
    array = np.asarray(array)
    if array.dtype.hasobject:
        raise ValueError(f"{path}: cannot save an array of Python objects (dtype {array.dtype}); "
                         "only numeric arrays are written")
    with atomic_write(path) as temporary, open(temporary, "wb") as handle:
        # Through a handle: np.save given a name not ending in .npy would append the suffix.
        np.save(handle, array, allow_pickle=False)


def _save_image(image, path: Path) -> None:
    with atomic_write(path) as temporary:
        image.save(temporary)


def write_label_map(labels: np.ndarray, path: str | os.PathLike) -> None:
    """Save H x W labels in [0, 255] as a palette PNG with VOC's colours, atomically."""
    from PIL import Image

    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.min(initial=0) < 0 or labels.max(initial=0) > 255:
        raise ValueError(f"{path}: labels must be an H x W map of values in [0, 255], got shape {labels.shape}")
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(VOC_PALETTE.reshape(-1).tolist())
    _save_image(image, Path(path))


def write_overlay(image: np.ndarray, labels: np.ndarray, path: str | os.PathLike, alpha: float = 0.5) -> None:
    """Save the image with its labels' VOC colours blended in (background kept), atomically."""
    from PIL import Image

    colours = VOC_PALETTE[np.asarray(labels).clip(0, 255)].astype(np.float32)
    mask = (np.asarray(labels) > 0)[..., None]
    blended = np.where(mask, (1 - alpha) * image + alpha * colours, image).round().astype(np.uint8)
    _save_image(Image.fromarray(blended), Path(path))
