"""Independent judges of generated images, trained once on real data and cached.

- `classifier`: the digit classifier (`get_classifier`): prompt accuracy, features for FD.
- `metrics`: `prompt_accuracy`, `frechet_distance`, `classifier_fd`, `diversity`, `evaluate_digits`.
- `scenes`: GenEval-style `score_scenes` for `digit_scenes` (digit, count, color, position).
- `stamps`: the stamp detector (`detect_stamps`): watermark, mosaic, subtitle.
- `cnn`, `augment`: the small CNN, its training loop and cache, on-device augmentations.
- `samples`, `report`: evaluate a trained generator (or every stage of a pipeline run) with these.
"""
