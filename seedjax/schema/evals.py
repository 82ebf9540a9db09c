"""`config.evals`: the evaluators a run reports, one named entry each (big_vision style).

    config.evals.<name>.type     the module seedjax/eval/<type>.py whose `Evaluator` computes the metrics
    config.evals.<name>.every    cadence in steps, and the last step; -1 = config.eval_every, 0 = never
    config.evals.<name>.prefix   prefix of its metric names in metrics.jsonl ('eval/')
    config.evals.<name>.<opt>    the type's own options (the keyword arguments of its Evaluator)

The loop builds them once (`seedjax.train.evaluators`); an unknown type or option exits 2 at
config validation. Types and the stages they serve:

    digit_prompts    generator on held-out digit prompts: prompt_accuracy, scene_*, frechet_distance
                     (the digit classifier's features), classifier_test_accuracy, seconds_per_image,
                     nfe (stages with an nfe hook: distillation)
    image_folder     generator on your own images (folder, jsonl): pixel_frechet_distance,
                     channel_mean_gap, channel_std_gap, diversity_ratio, seconds_per_image, nfe
    target_share     SFT: share of generated / real held-out images that meet sft.target
    edit_success     editing (data.source=edit_triples) on held-out triples: edit_success (overall and per
                     edit type), edit_confirmed, preserved_psnr, untouched_kept, each also *_real
                     on the real targets, seconds_per_image
    rlhf_reward      RLHF: the reward models' composite reward (and each term) on generated images
    reward_accuracy  reward stage: held-out accuracy per head, per perturbation and degradation kind
    reconstruction   VAE: psnr, ssim, latent_std of held-out images
    video_prompts    video generator on held-out moving-digit prompts (options frames, multishot, i2v,
                     seed): video/frame_accuracy, motion_accuracy, temporal_consistency,
                     first_frame_psnr (i2v), shot_accuracy (multishot)
    restoration      restoration model (diffusion.restore) on held-out degraded clips (options num_clips,
                     batch_size, captions): restore/psnr, ssim, and the degraded input's, seconds_per_clip

Generator types take `num_prompts` and `batch_size` (0 = config.eval.num_prompts / batch_size);
those that sample the same prompts at the same step share one generation.
"""

from __future__ import annotations

import ml_collections

DIGIT_SOURCES = ("digits", "digit_scenes")  # data the digit classifier can judge
NON_DIGIT_SOURCES = ("folder", "jsonl", "video_folder", "video_jsonl")  # your own images/videos: never digits


def eval_entry(type: str, every: int = -1, prefix: str = "eval/", **options) -> ml_collections.ConfigDict:
    """One `config.evals` entry: its type, cadence, metric prefix and the type's options."""
    return ml_collections.ConfigDict(dict(type=type, every=every, prefix=prefix, **options))


def generator_entry(type: str, **options) -> ml_collections.ConfigDict:
    """An entry of a type that samples held-out prompts (0 = config.eval.num_prompts / batch_size)."""
    return eval_entry(type, **{"num_prompts": 0, "batch_size": 0, **options})


def generator_eval(source: str = "digits", **options) -> ml_collections.ConfigDict:
    """The held-out generator metrics that apply to training data of `source`: the digit judges'
    (`digit_prompts`), the video judges on moving digits (`video_prompts`), or for your own images
    pixel statistics (`image_folder`). Your own videos have no held-out judge yet: ValueError."""
    if source in ("video_folder", "video_jsonl"):
        raise ValueError(f"data.source={source!r}: no held-out evaluator judges your own videos yet; leave "
                         f"config.evals empty (sample grids still show progress)")
    if source == "moving_digits":
        return generator_entry("video_prompts", **options)
    if source == "edit_triples":
        return generator_entry("edit_success", **options)
    if source == "edit_jsonl":
        raise ValueError("data.source='edit_jsonl': no held-out evaluator judges your own edits yet; leave "
                         "config.evals empty (sample grids still show progress)")
    return generator_entry("image_folder" if source in NON_DIGIT_SOURCES else "digit_prompts", **options)


def evals_config(**entries: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config.evals` holding `entries` (name -> `eval_entry(...)`)."""
    return ml_collections.ConfigDict(entries)
