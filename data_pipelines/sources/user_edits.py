"""Your own edit triples (`data.source=edit_jsonl`): source image(s), instruction, target, from a JSONL manifest.

Manifest lines look like

    {"source": "pairs/001_before.png", "instruction": "make the sky orange", "target": "pairs/001_after.png"}
    {"source": ["a.png", "b.jpg"], "instruction": "the dog of image 1 on the sofa of image 2", "target": "c.png"}

Paths are relative to the manifest's directory (or absolute). `source` is one image, or a list
of one or two (`edit_triples.MAX_SOURCES`); the first is the image being edited and must have the
target's size (the two are resized and cropped alike, so they stay aligned); a second is a
further reference of any size. Every image is fit to the target's resolution bucket as image
rows are (`samples.fit_image_array`).

The manifest is scanned once at start (every image header read). What cannot be used is skipped
and counted per kind, as image sources do: `bad_manifest_line` (not JSON, no string `target`, a
`source` that is not one or two paths), `missing_caption` (no instruction), `unreadable_image`
(a listed image that does not open), `wrong_shape` (the first source's size is not the target's);
a manifest with no usable line fails right there, naming its path. Rows have the keys of an edit
row without generated labels: `source` [2, H, W, C], `num_sources`, `target`, the instruction's
tokens (`samples.finalize_edit`).
"""

from __future__ import annotations

import os

import numpy as np

from data_pipelines.core.samples import BadSample
from data_pipelines.sources.edit_triples import MAX_SOURCES
from data_pipelines.sources.folders import _ScannedImages, decode_image, manifest_entries, read_header


def _source_paths(row: dict, base: str, where: str) -> list[str]:
    """The source paths of a manifest line; BadSample('bad_manifest_line') if it has none that fit."""
    sources = row.get("source")
    sources = [sources] if isinstance(sources, str) else sources
    if not isinstance(sources, list) or not 1 <= len(sources) <= MAX_SOURCES or \
            not all(isinstance(p, str) for p in sources):
        raise BadSample("bad_manifest_line", where, f"'source' must be a path or a list of 1 to {MAX_SOURCES} paths")
    return [os.path.join(base, p) for p in sources]


class EditManifestSource(_ScannedImages):
    """The edit triples listed in a JSONL manifest (see the module doc for the line format)."""

    edits = True  # rows are edits (samples.finalize_edit), as edit_triples'
    edit_labels = False  # ... without generated labels (samples.Layout.edit_labels)

    def __init__(self, manifest: str):
        super().__init__(manifest)
        if not os.path.isfile(manifest):
            raise ValueError(f"{manifest}: no such manifest file (data.path of an edit_jsonl source)")
        base = os.path.dirname(os.path.abspath(manifest))

        def parse(row: dict, target: str, where: str) -> dict:
            sources = _source_paths(row, base, where)
            instruction = row.get("instruction")
            if not isinstance(instruction, str) or not instruction.strip():
                raise BadSample("missing_caption", where, "no instruction")
            return {"path": target, "sources": sources, "instruction": instruction.strip(), "where": where, "tags": []}

        entries = manifest_entries(manifest, parse, self._skip, path_key="target")
        # Unreadable sources, and a first source of another size than its target, are skipped here;
        # _finish_scan skips unreadable targets.
        kept = []
        for entry in entries:
            try:
                first = [read_header(p) for p in entry["sources"]][0]
                if first != read_header(entry["path"]):
                    raise BadSample("wrong_shape", entry["where"], "the first source's size is not the target's")
            except BadSample as e:
                self._skip(e.kind, e.where)
                continue
            kept.append(entry)
        self._finish_scan(kept)

    def load(self, index: int, position: int) -> dict:
        entry = self.entries[index]
        return {"target": decode_image(entry["path"]), "source": [decode_image(p) for p in entry["sources"]],
                "num_sources": np.int32(len(entry["sources"])), "instruction": entry["instruction"],
                "where": entry["where"]}
