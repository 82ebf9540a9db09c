"""`digit_scenes` as a random-access source: scene i of the stream is `scenes.make_scene(i)`."""

from __future__ import annotations

import numpy as np

from data_pipelines.sources import scenes


def scene_config(data_cfg, split: str = "train") -> scenes.SceneConfig:
    kinds = tuple(k.strip() for k in data_cfg.scenes.defect_kinds.split(",") if k.strip())
    return scenes.SceneConfig(
        image_size=data_cfg.image_size,
        max_objects=data_cfg.scenes.max_objects,
        long_tail=data_cfg.scenes.long_tail,
        defect_fraction=data_cfg.scenes.defect_fraction,
        defect_kinds=kinds,
        split=split,
        # Configs saved before object_size existed used the generator's default.
        object_size=(data_cfg.scenes.get("object_size_min", scenes.SceneConfig.object_size[0]),
                     data_cfg.scenes.get("object_size_max", scenes.SceneConfig.object_size[1])),
    )


class SceneSource:
    """A virtual set of `data.scenes.num_samples` generated scenes (RGB, labels, defect boxes, tags).

    The 'test' split is the generator's held-out prompt set (test glyphs, canonical captions,
    no defects), which evaluation scores against.
    """

    channels = 3
    scene_labels = True
    tags = scenes.TAG_VOCAB
    latent = False
    text_features = False

    def __init__(self, data_cfg, *, split: str, seed: int):
        self.cfg = scene_config(data_cfg, split)
        self.seed = seed
        self.split = split
        self.num_samples = int(data_cfg.scenes.num_samples)
        if self.num_samples <= 0:
            raise ValueError(f"data.scenes.num_samples must be positive, got {self.num_samples}")
        self.name = f"digit_scenes[{split}]"
        self.scan_skips: dict[str, tuple[int, str]] = {}

    def __len__(self) -> int:
        return self.num_samples

    def sizes(self) -> np.ndarray:
        return np.full((len(self), 2), self.cfg.image_size, np.int64)

    def load(self, index: int, position: int) -> dict:
        if self.split == "test":
            raise ValueError("digit_scenes: the test split is the held-out prompt set; read it with eval_rows()")
        raw = scenes.make_scene(index, self.cfg, self.seed)
        raw["image"] = raw["image"].astype(np.float32) / 255.0
        raw["where"] = f"{self.name}#{index}"
        return raw

    def eval_rows(self, num: int, seed: int) -> list[dict]:
        """The first `num` held-out prompts with their clean reference images."""
        held = scenes.held_out_prompts(num, self.cfg, seed)
        keys = ("scene_digit", "scene_color", "scene_box", "scene_count")
        return [
            {"image": held["image"][i].astype(np.float32) / 255.0, "caption": held["caption"][i],
             **{k: held[k][i] for k in keys}, "where": f"{self.name}#{i}"}
            for i in range(num)
        ]
