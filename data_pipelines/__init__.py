"""Grain data pipelines: sources, Seedream 3.0 data techniques, and the iterators the loop consumes.

    from data_pipelines import default_config, make_train_iterator, make_eval_batch

core/        Grain streams, resolution buckets, mixtures, the sample contract, ArrayRecord shards,
             the tokenizer, the config and the iterators (core/pipeline.py); video clips and their
             (frames, height, width) buckets (core/clips.py)
sources/     digits, digit scenes, captioned moving digits (video), image folders and manifests,
             video folders and manifests (PyAV), reward pairs, edit triples of digit scenes
             (data.source=edit_triples: source/target images, instruction, exact labels)
techniques/  defect-aware training, dual-axis sampling, curation filters, real-world degradations
             (data.degradations.enabled: (degraded, clean) pairs for restoration)
cli/         prepare, report, measure (python -m data_pipelines.cli.<name>): the only part that
             imports seedjax

`import data_pipelines` stays light (configs import it): Grain, and with it JAX, loads only when
`make_train_iterator` or `make_eval_batch` is first used.
"""

from data_pipelines.core.config import default_config
from data_pipelines.core.mixtures import channels

__all__ = ["default_config", "make_train_iterator", "make_eval_batch", "channels"]

_PIPELINE = ("make_train_iterator", "make_eval_batch")


def __getattr__(name: str):
    if name in _PIPELINE:
        from data_pipelines.core import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'data_pipelines' has no attribute {name!r}")
