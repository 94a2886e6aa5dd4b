"""The images a command line names: folders expanded, files read, and those that cannot be used
set aside with the reason, before anything is sent (stdlib only).

A file the server could not even start to decode (empty, or no PNG, JPEG, BMP, GIF or WebP by its
first bytes) is named here, in the server's own words, and never sent: the server refuses a whole
request at its first bad image, so each such file used to cost one more call, and the good images
sent with it were refused (and counted INVALID_ARGUMENT) once more. A file that starts like an
image but is broken further in still takes the server to find out (client/classify.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from client import ClientError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
# The first bytes of each format the server decodes (server/dataplane/imagefile.py FORMATS), as
# Pillow's own checks read them (a superset for WebP: "RIFF", 4 bytes of length, "WEBP").
_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"GIF87a", b"GIF89a")


@dataclass(frozen=True)
class ImageFile:
    path: Path
    data: bytes


@dataclass(frozen=True)
class Unusable:
    """An input left out, and why: the other inputs are still classified (exit status 2)."""

    path: Path
    reason: str

    def as_dict(self) -> dict:
        return {"file": str(self.path), "error": self.reason}


def gather_images(paths: Iterable[str | Path]) -> tuple[list[ImageFile], list[Unusable]]:
    """The images of `paths` (files as given; folders: their image files, not recursive, sorted
    by name), read; and the inputs that cannot be used, in the order given: a missing path, a
    folder that cannot be listed or holds no image files, a file that cannot be read or is no
    image by its first bytes."""
    images, unusable = [], []
    for path in map(Path, paths):
        files, problem = _image_paths(path)
        if problem:
            unusable.append(Unusable(path, problem))
        for file in files:
            image = _read(file)
            if isinstance(image, Unusable):
                unusable.append(image)
            elif (reason := not_an_image(image.data)) is not None:
                unusable.append(Unusable(file, reason))
            else:
                images.append(image)
    return images, unusable


def require_images(paths: Iterable[str | Path]) -> list[ImageFile]:
    """gather_images for a caller that needs every input (scripts/demo_classify.py): the first
    unusable one is a ClientError (exit 2)."""
    images, unusable = gather_images(paths)
    if unusable:
        raise ClientError(f"{unusable[0].path}: {unusable[0].reason}", exit_code=2)
    return images


def not_an_image(data: bytes) -> str | None:
    """Why the server would refuse `data` before decoding a pixel, in its words; None when its
    first bytes are those of a format the server decodes (it may still be broken further in)."""
    if not data:
        return "empty image (0 bytes)"
    if data.startswith(_SIGNATURES) or (data.startswith(b"RIFF") and data[8:12] == b"WEBP"):
        return None
    return f"not a PNG, JPEG, BMP, GIF or WebP image (first bytes {data[:8]!r})"


def _image_paths(path: Path) -> tuple[list[Path], str | None]:
    """A file as given, a folder's image files; or why `path` gives none."""
    try:
        if path.is_dir():
            inside = _folder_images(path)
            return inside, (None if inside else
                            f"no image files ({' '.join(IMAGE_SUFFIXES)}) in this folder")
        if path.exists():
            return [path], None
        return [], "no such file or folder"
    except OSError as e:
        return [], f"cannot read it ({e.strerror or e})"


def _folder_images(folder: Path) -> list[Path]:
    """Regular files with an image suffix, and links to such names whose target has gone (they
    are reported when read, as a file deleted between listing and reading is)."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
                  and (p.is_file() or (p.is_symlink() and not p.exists())))


def _read(path: Path) -> ImageFile | Unusable:
    try:
        return ImageFile(path, path.read_bytes())
    except FileNotFoundError:
        return Unusable(path, "no such file (gone since its folder was listed?)")
    except OSError as e:
        return Unusable(path, f"cannot read it ({e.strerror or e})")
