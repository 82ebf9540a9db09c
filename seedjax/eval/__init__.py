"""Evaluators chosen by `config.evals`, the judges they use, and the pipeline report.

An entry `config.evals.<name>` with `type=T` runs `seedjax.eval.T.Evaluator` (built once by
`seedjax.train.evaluators`; defaults and the list of types in `seedjax.schema.evals`):

    Evaluator(config, **options)        cheap: no data, no device (it runs at config validation)
    run(state, stage, rng)              yields (metric, value) pairs, logged as <prefix><metric>

- `digit_prompts`, `image_folder`: a generator on held-out prompts (digit judges | pixel statistics).
- `video_prompts`: a video generator on held-out moving-digit prompts (`judges/video.py`: per-frame
  digits, motion, temporal consistency, first-frame PSNR for I2V, per-shot accuracy).
- `target_share` (SFT), `rlhf_reward` (RLHF), `reward_accuracy` (reward models), `reconstruction` (VAE).
- `samples`: the sampling they share (`GeneratorEvaluator`: the stage's `sample` hook jitted once,
  the last chunk padded) and the digit judges' verdict `score_images`.
- `judges/`: the digit classifier, the scene scorer, the stamp detector, the video judges.
- `metrics`: `prompt_accuracy`, `frechet_distance`, `classifier_fd`, `diversity`, `evaluate_digits`.
- `report`: every stage of a pipeline run on the same held-out prompts (`python -m seedjax.eval.report`).
"""
