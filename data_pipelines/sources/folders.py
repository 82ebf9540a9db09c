"""Image folders (`image.png` + `image.txt` caption) and JSONL manifests, any size or aspect ratio.

Manifest lines look like

    {"path": "a/cat.jpg", "caption": "a cat", "tags": ["photo"],
     "defects": [{"box": [0.8, 0.0, 1.0, 1.0], "kind": "subtitle"}]}

`path` is relative to the manifest's directory (or absolute); boxes are (y0, x0, y1, x1) in
[0, 1]; `kind` is one of defects.DEFECT_KINDS (anything else counts as 'other'); `defects`
may also be a plain list of boxes.

Sources are scanned once at start (file list, captions, image headers for the resolution
buckets). What cannot be used is skipped and counted per kind; a source with no usable
sample fails right there, naming its path.
"""

from __future__ import annotations

import concurrent.futures
import json
import os

import numpy as np

from data_pipelines.techniques import defects
from data_pipelines.core.samples import BadSample

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def read_header(path: str) -> tuple[int, int]:
    """(height, width) from the image header, without decoding; BadSample if it is not an image."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.height, img.width
    except Exception as e:  # PIL raises many types for a bad file; all mean the same here
        raise BadSample("unreadable_image", path, f"{type(e).__name__}: {e}") from None


def decode_image(path: str):
    """The decoded PIL image; BadSample('truncated_image' | 'unreadable_image') if that fails."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            return img.copy() if img.mode not in ("P", "PA") else img.convert("RGBA")
    except OSError as e:
        kind = "truncated_image" if "truncated" in str(e) or "broken data stream" in str(e) else "unreadable_image"
        raise BadSample(kind, path, str(e)) from None
    except Exception as e:
        raise BadSample("unreadable_image", path, f"{type(e).__name__}: {e}") from None


class _ScannedImages:
    """Shared scanning/loading for both layouts: entries of (path, caption, boxes, kinds, tags)."""

    channels = 3
    scene_labels = False
    latent = False
    text_features = False

    def __init__(self, name: str):
        self.name = name
        self.scan_skips: dict[str, tuple[int, str]] = {}

    def _skip(self, kind: str, where: str) -> None:
        count, first = self.scan_skips.get(kind, (0, where))
        self.scan_skips[kind] = (count + 1, first)

    def _finish_scan(self, entries: list[dict]) -> None:
        """Read every header (threads: this is I/O), keep the readable entries."""
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            results = list(pool.map(self._try_header, [e["path"] for e in entries]))
        self.entries, sizes = [], []
        for entry, result in zip(entries, results):
            if isinstance(result, BadSample):
                self._skip(result.kind, result.where)
            else:
                self.entries.append(entry)
                sizes.append(result)
        if not self.entries:
            found = ", ".join(f"{n} {k}" for k, (n, _) in self.scan_skips.items()) or "nothing found"
            raise ValueError(f"{self.name}: no valid sample ({found})")
        self._sizes = np.asarray(sizes, np.int64)
        self.tags = tuple(sorted({t for e in self.entries for t in e["tags"]}))

    @staticmethod
    def _try_header(path):
        try:
            return read_header(path)
        except BadSample as e:
            return e

    def __len__(self) -> int:
        return len(self.entries)

    def sizes(self) -> np.ndarray:
        return self._sizes

    def load(self, index: int, position: int) -> dict:
        entry = self.entries[index]
        return {"image": decode_image(entry["path"]), "caption": entry["caption"], "defect_box": entry["boxes"],
                "defect_kind": entry["kinds"], "tags": entry["tags"], "where": entry["path"], "file": entry["path"]}


class FolderSource(_ScannedImages):
    """Every image under `root` (recursively) that has a same-name `.txt` caption."""

    def __init__(self, root: str):
        super().__init__(root)
        if not os.path.isdir(root):
            raise ValueError(f"{root}: not a directory (data.path of an image folder)")
        entries = [{"path": path, "caption": caption, "boxes": np.zeros((0, 4), np.float32),
                    "kinds": np.zeros((0,), np.int32), "tags": []}
                   for path, caption in captioned_files(root, IMAGE_EXTENSIONS, self._skip)]
        self._finish_scan(entries)


def captioned_files(root: str, extensions, skip) -> list[tuple[str, str]]:
    """(path, caption) of every file under `root` (recursively, in sorted order) whose extension
    is in `extensions` and that has a same-name `.txt` caption; `skip('missing_caption', path)`
    for the others."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for filename in sorted(filenames):
            stem, ext = os.path.splitext(filename)
            if ext.lower() not in extensions:
                continue
            path = os.path.join(dirpath, filename)
            caption = _read_caption(os.path.join(dirpath, stem + ".txt"))
            if caption:
                found.append((path, caption))
            else:
                skip("missing_caption", path)
    return found


def _read_caption(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError):
        return ""


class ManifestSource(_ScannedImages):
    """The images listed in a JSONL manifest (see the module doc for the line format)."""

    def __init__(self, manifest: str):
        super().__init__(manifest)
        if not os.path.isfile(manifest):
            raise ValueError(f"{manifest}: no such manifest file (data.path of a jsonl source)")
        self._finish_scan(manifest_entries(manifest, _parse_row, self._skip))


def manifest_entries(manifest: str, parse, skip, path_key: str = "path") -> list[dict]:
    """`parse(row, path, where)` of every line of a JSONL manifest whose `path_key` (a path relative
    to the manifest) is a string; `skip(kind, where)` for lines that are not one or that `parse`
    refuses with a BadSample."""
    base = os.path.dirname(os.path.abspath(manifest))
    entries = []
    with open(manifest, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{manifest}:{lineno}"
            try:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise BadSample("bad_manifest_line", where, f"not JSON: {e}") from None
                if not isinstance(row, dict) or not isinstance(row.get(path_key), str):
                    raise BadSample("bad_manifest_line", where, f"needs an object with a string {path_key!r}")
                entries.append(parse(row, os.path.join(base, row[path_key]), where))
            except BadSample as e:
                skip(e.kind, e.where)
    return entries


def _parse_row(row: dict, path: str, where: str) -> dict:
    caption = row.get("caption")
    if not isinstance(caption, str) or not caption.strip():
        raise BadSample("missing_caption", where)
    tags = row.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise BadSample("bad_manifest_line", where, "'tags' must be a list of strings")
    boxes, kinds = _parse_defects(row.get("defects", []), where)
    return {"path": path, "caption": caption.strip(), "boxes": boxes, "kinds": kinds, "tags": tags}


def _parse_defects(items, where: str) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(items, list):
        raise BadSample("bad_manifest_line", where, "'defects' must be a list")
    boxes, kinds = [], []
    for item in items:
        box, kind = (item.get("box"), item.get("kind", "other")) if isinstance(item, dict) else (item, "other")
        if (not isinstance(box, list) or len(box) != 4 or not all(isinstance(v, (int, float)) for v in box)
                or not all(0.0 <= v <= 1.0 for v in box) or box[2] < box[0] or box[3] < box[1]):
            raise BadSample("bad_manifest_line", where, f"defect box {box!r} is not [y0, x0, y1, x1] in [0, 1]")
        boxes.append(box)
        kinds.append(defects.DEFECT_KINDS.index(kind) if kind in defects.DEFECT_KINDS else len(defects.DEFECT_KINDS) - 1)
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(kinds, np.int32)
