"""Independent judges of generated images: networks and rules that know the bundled data.

- `classifier`: the digit classifier (`get_classifier`): prompt accuracy, features for the
  Frechet distance (its network and training: `seedjax.train.digit_encoder`).
- `scenes`: GenEval-style `score_scenes` for `digit_scenes` (digit, count, color, position).
- `stamps`: the stamp detector (`detect_stamps`): watermark, mosaic, subtitle.

They judge only what they were built for (digits, digit scenes); the evaluators in
`seedjax.eval` pick them by the data (`digit_prompts`), never for your own images
(`image_folder`).
"""
