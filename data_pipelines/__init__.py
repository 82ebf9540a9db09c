"""Grain data pipelines: sources, Seedream 3.0 data techniques, and the iterators the loop consumes.

    from data_pipelines import default_config, make_train_iterator, make_eval_batch
"""

from data_pipelines.config import default_config
from data_pipelines.pipeline import channels, make_eval_batch, make_train_iterator

__all__ = ["default_config", "make_train_iterator", "make_eval_batch", "channels"]
