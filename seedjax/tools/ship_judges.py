"""Train the judges that shipped configs use into seedjax/models/small_cnn_weights/, under their keys.

    python -m seedjax.tools.ship_judges

Run it after changing a shipped judge's settings, code version or training, and commit the files
it writes: tests/test_eval_metrics.py fails while a shipped judge would have to be trained. Each
judge trains exactly as on first use (`small_cnn.load_or_train`, into an empty cache), so a shipped
file is what any machine would otherwise have cached.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

from seedjax.eval.judges import stamps
from seedjax.models import small_cnn
from seedjax.train import digit_encoder

# What shipped configs and evaluators load: the digit CNN at the 32-pixel default and at the tiny
# variants' 16 pixels (the classifier judges, REPA's encoder), and the 64-pixel stamp detector.
SHIPPED_JUDGES = (("digit_classifier", {"image_size": 32}), ("digit_classifier", {"image_size": 16}),
                  ("stamp_detector", {"image_size": 64}))


def load(name: str, settings: dict):
    """The judge `name` with `settings`, trained first where nothing has it; returns its metadata."""
    if name == "digit_classifier":
        return digit_encoder.load(**settings).metadata
    return stamps.get_stamp_detector.__wrapped__(**settings).metadata


def main() -> int:
    shutil.rmtree(small_cnn.SHIPPED, ignore_errors=True)
    with tempfile.TemporaryDirectory() as cache:
        os.environ["SEEDJAX_CACHE"] = cache
        for name, settings in SHIPPED_JUDGES:
            metadata = load(name, settings)
            print(f"{name} {settings}: {dict((k, v) for k, v in metadata.items() if k != 'settings')}")
        shutil.copytree(cache, small_cnn.SHIPPED, ignore=shutil.ignore_patterns("*.lock", "*.tmp"))
    print(f"wrote {sorted(str(p.relative_to(small_cnn.SHIPPED)) for p in small_cnn.SHIPPED.rglob('*.safetensors'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
