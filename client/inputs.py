"""The images a command line names: folders expanded, files read, and those that cannot be used
set aside with the reason, before anything is sent (stdlib only).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from client import ClientError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


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
    folder that cannot be listed or holds no image files, a file that cannot be read."""
    images, unusable = [], []
    for path in map(Path, paths):
        files, problem = _image_paths(path)
        if problem:
            unusable.append(Unusable(path, problem))
        for file in files:
            image = _read(file)
            (unusable if isinstance(image, Unusable) else images).append(image)
    return images, unusable


def require_images(paths: Iterable[str | Path]) -> list[ImageFile]:
    """gather_images for a caller that needs every input (scripts/demo_classify.py): the first
    unusable one is a ClientError (exit 2)."""
    images, unusable = gather_images(paths)
    if unusable:
        raise ClientError(f"{unusable[0].path}: {unusable[0].reason}", exit_code=2)
    return images


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
