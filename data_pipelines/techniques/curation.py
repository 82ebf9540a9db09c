"""Curated subsets: a filter expression over per-sample metadata (SFT data selection).

    data.filter = "ink >= 0.325"                       # bold handwriting only
    data.filter = "'count:1' in tags and label != 7"   # tags and labels
    data.filter = "min(height, width) >= 512"          # resolution floor
    data.filter = "len(caption) >= 40"                 # detailed captions

The expression is Python syntax restricted to field names, literals, comparisons
(`== != < <= > >= in not in`), `and`/`or`/`not`, arithmetic and `min`/`max`/`abs`/`len`; anything
else (attribute access, other calls, lambdas) is rejected when the expression is parsed, with
the offending piece named. Fields (`METADATA_FIELDS`) come from the source's labels and
caption and from cheap statistics of the decoded image, so the same expression can be
evaluated on generated images (`image_statistics`) to measure how much of a model's output
has the selected attribute.
"""

from __future__ import annotations

import ast
import concurrent.futures
import operator

import numpy as np

from data_pipelines.core.samples import BadSample

METADATA_FIELDS = {
    "caption": "the caption (str)",
    "tags": "the sample's tags (tuple of str; e.g. 'count:2', 'color:red', 'defect:watermark')",
    "label": "the digit of a `digits` sample (-1 when unknown)",
    "count": "objects in a `digit_scenes` sample (1 for a `digits` sample, 0 when unknown)",
    "height": "native image height in pixels",
    "width": "native image width in pixels",
    "ink": "mean glyph intensity in [0, 1] (max over channels): stroke weight",
    "contrast": "standard deviation of the glyph intensity",
    "sharpness": "mean absolute Laplacian of the glyph intensity (blur lowers it)",
}
IMAGE_FIELDS = ("ink", "contrast", "sharpness")

_COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
            ast.Gt: operator.gt, ast.GtE: operator.ge, ast.In: lambda a, b: a in b,
            ast.NotIn: lambda a, b: a not in b}
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_FUNCTIONS = {"min": min, "max": max, "abs": abs, "len": len}


class SampleFilter:
    """A parsed, validated filter expression; call it on a metadata dict to get a bool."""

    def __init__(self, expression: str, what: str = "data.filter"):
        self.expression, self.what = expression, what
        try:
            self._tree = ast.parse(expression.strip(), mode="eval").body
        except SyntaxError as e:
            raise ValueError(f"{what}: {expression!r} is not a valid expression ({e.msg})") from None
        self.fields: set[str] = set()
        self._check(self._tree)

    def _check(self, node) -> None:
        if isinstance(node, ast.Name):
            if node.id not in METADATA_FIELDS:
                raise ValueError(f"{self.what}: unknown field {node.id!r} in {self.expression!r}; "
                                 f"fields: {', '.join(METADATA_FIELDS)}")
            self.fields.add(node.id)
            return
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS or node.keywords:
                raise ValueError(f"{self.what}: only min(), max(), abs() and len() may be called, in {self.expression!r}")
            for arg in node.args:
                self._check(arg)
            return
        allowed = (ast.Constant, ast.BoolOp, ast.UnaryOp, ast.Compare, ast.BinOp, ast.Tuple, ast.List)
        if not isinstance(node, allowed):
            raise ValueError(f"{self.what}: {ast.unparse(node)!r} is not allowed in a filter ({self.expression!r})")
        if isinstance(node, ast.UnaryOp) and not isinstance(node.op, (ast.Not, ast.USub)):
            raise ValueError(f"{self.what}: operator in {ast.unparse(node)!r} is not allowed")
        if isinstance(node, ast.BinOp) and type(node.op) not in _BINARY:
            raise ValueError(f"{self.what}: operator in {ast.unparse(node)!r} is not allowed")
        if isinstance(node, ast.Compare) and not all(type(op) in _COMPARE for op in node.ops):
            raise ValueError(f"{self.what}: comparison in {ast.unparse(node)!r} is not allowed")
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, (ast.operator, ast.boolop, ast.unaryop, ast.cmpop, ast.expr_context)):
                self._check(child)

    @property
    def needs_image(self) -> bool:
        return bool(self.fields & set(IMAGE_FIELDS))

    def __call__(self, metadata: dict) -> bool:
        return bool(self._eval(self._tree, metadata))

    def _eval(self, node, md: dict):
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return md[node.id]
        if isinstance(node, (ast.Tuple, ast.List)):
            return tuple(self._eval(e, md) for e in node.elts)
        if isinstance(node, ast.BoolOp):
            values = (self._eval(v, md) for v in node.values)
            return all(values) if isinstance(node.op, ast.And) else any(values)
        if isinstance(node, ast.UnaryOp):
            value = self._eval(node.operand, md)
            return (not value) if isinstance(node.op, ast.Not) else -value
        if isinstance(node, ast.BinOp):
            return _BINARY[type(node.op)](self._eval(node.left, md), self._eval(node.right, md))
        if isinstance(node, ast.Call):
            return _FUNCTIONS[node.func.id](*(self._eval(a, md) for a in node.args))
        left = self._eval(node.left, md)  # ast.Compare, chained like Python's
        for op, right_node in zip(node.ops, node.comparators):
            right = self._eval(right_node, md)
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True


# ----------------------------------------------------------------------------- metadata


def image_statistics(images01: np.ndarray) -> dict[str, np.ndarray]:
    """The image fields of the metadata for a batch [N, H, W, C] (or [N, H, W]) in [0, 1]."""
    x = np.asarray(images01, np.float32)
    x = x.max(axis=-1) if x.ndim == 4 else x
    laplacian = (np.roll(x, 1, 1) + np.roll(x, -1, 1) + np.roll(x, 1, 2) + np.roll(x, -1, 2) - 4 * x)[:, 1:-1, 1:-1]
    return {"ink": x.mean(axis=(1, 2)), "contrast": x.std(axis=(1, 2)),
            "sharpness": np.abs(laplacian).mean(axis=(1, 2))}


def _image01(image) -> np.ndarray:
    """A raw sample's image (PIL, uint8 or float in [0, 1]) as float [H, W, C] in [0, 1]."""
    arr = np.asarray(image)
    arr = arr.astype(np.float32) / 255.0 if arr.dtype == np.uint8 else arr.astype(np.float32)
    return arr if arr.ndim == 3 else arr[..., None]


def sample_metadata(raw: dict, with_image: bool = True) -> dict:
    """The metadata fields of one raw source sample (see METADATA_FIELDS)."""
    label = int(raw.get("label", -1))
    count = int(raw["scene_count"]) if "scene_count" in raw else (1 if label >= 0 else 0)
    md = {"caption": raw.get("caption", ""), "tags": tuple(raw.get("tags", ())), "label": label, "count": count}
    image = raw.get("image")
    if image is not None:
        md["height"], md["width"] = (image.height, image.width) if hasattr(image, "height") else image.shape[:2]
        if with_image:
            md.update({k: float(v[0]) for k, v in image_statistics(_image01(image)[None]).items()})
    return md


def select(source, indices: np.ndarray, sample_filter: SampleFilter, threads: int = 8) -> np.ndarray:
    """The entries of `indices` (into `source`) whose metadata passes the filter.

    Every candidate is loaded once (threads: folder and manifest sources decode files). A
    sample that fails to load is left out (the stream would skip it anyway).
    """
    def keep(index: int) -> bool:
        try:
            raw = source.load(int(index), 0)
        except BadSample:
            return False
        md = sample_metadata(raw, with_image=sample_filter.needs_image)
        missing = sample_filter.fields - set(md)
        if missing:
            raise ValueError(f"{sample_filter.what}: {source.name} has no {sorted(missing)} for its samples")
        return sample_filter(md)

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        mask = np.fromiter(pool.map(keep, indices), bool, count=len(indices))
    return np.asarray(indices)[mask]


def filter_members(source, members: dict, expression: str) -> dict:
    """Per-bucket member indices of `source` restricted to the samples `expression` selects."""
    sample_filter = SampleFilter(expression)
    kept = {bucket: select(source, idx, sample_filter) for bucket, idx in members.items()}
    kept = {bucket: idx for bucket, idx in kept.items() if len(idx)}
    total = sum(len(idx) for idx in members.values())
    if not kept:
        raise ValueError(f"data.filter {expression!r} keeps none of the {total} samples of {source.name}")
    return kept
