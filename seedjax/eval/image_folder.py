"""`type=image_folder`: a generator on held-out prompts of your own images (no digit judge).

The digit classifier's features mean nothing on photographs, and no pretrained image network
ships with seedjax (no network at run time), so the comparison with the real held-out images
is made in a space that assumes nothing about the content: the images average-pooled to
`feature_size` x `feature_size` pixels per channel (colour layout and coarse structure).

    pixel_frechet_distance   Frechet distance between Gaussians fitted to the pooled samples and
                             the pooled real images (same prompts)
    channel_mean_gap         largest |mean of a channel| difference, samples vs real (images in [-1, 1])
    channel_std_gap          the same for each channel's standard deviation (contrast)
    diversity_ratio          mean pairwise distance among the pooled samples / among the real images
                             (near 1: as varied as the data; near 0: collapsed)
    seconds_per_image, nfe   what a sample costs (nfe: stages with an nfe hook)

Without real images in the held-out data (latent shards and no VAE) only the cost is reported.
Comparisons need at least 2 prompts; with few prompts the distance is noisy: read its trend.
"""

from __future__ import annotations

import numpy as np

from seedjax.eval import metrics, samples


def pooled(images: np.ndarray, size: int) -> np.ndarray:
    """Images [N, H, W, C] -> [N, size * size * C]: the mean over each of size x size cells."""
    n, h, w, c = images.shape
    ys = np.linspace(0, h, size + 1).astype(int)
    xs = np.linspace(0, w, size + 1).astype(int)
    cells = [images[:, ys[i]:max(ys[i + 1], ys[i] + 1), xs[j]:max(xs[j + 1], xs[j] + 1)].mean(axis=(1, 2))
             for i in range(size) for j in range(size)]
    return np.stack(cells, axis=1).reshape(n, -1).astype(np.float64)


def mean_pairwise_distance(features: np.ndarray) -> float:
    sq = np.sum(features**2, 1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * features @ features.T, 0.0)
    n = len(features)
    return float(np.sqrt(d2).sum() / max(n * (n - 1), 1))


def compare(generated: np.ndarray, real: np.ndarray, feature_size: int) -> dict[str, float]:
    """The statistics above for generated and real images [N, H, W, C] in [-1, 1]."""
    generated, real = np.asarray(generated, np.float64), np.asarray(real, np.float64)
    if generated.shape[-1] != real.shape[-1]:
        raise ValueError(f"image_folder: samples have {generated.shape[-1]} channels, real images {real.shape[-1]}")
    axes = (0, 1, 2)
    out = {"channel_mean_gap": float(np.max(np.abs(generated.mean(axes) - real.mean(axes)))),
           "channel_std_gap": float(np.max(np.abs(generated.std(axes) - real.std(axes))))}
    if len(generated) >= 2 and len(real) >= 2:
        fake_f, real_f = pooled(generated, feature_size), pooled(real, feature_size)
        out["pixel_frechet_distance"] = metrics.frechet_distance(fake_f, real_f)
        spread = mean_pairwise_distance(real_f)
        out["diversity_ratio"] = mean_pairwise_distance(fake_f) / spread if spread > 0 else float("nan")
    return out


class Evaluator(samples.GeneratorEvaluator):
    kind = "image_folder"

    def __init__(self, config, *, num_prompts: int = 0, batch_size: int = 0, feature_size: int = 8):
        super().__init__(config, num_prompts=num_prompts, batch_size=batch_size)
        if not 1 <= feature_size <= self.data.image_size:
            raise ValueError(f"type image_folder: feature_size must be in 1..{self.data.image_size}, got {feature_size}")
        self.feature_size = int(feature_size)

    def run(self, state, stage, rng):
        images, batch, seconds = self.generate(state, stage, rng)
        if "image" in batch:
            yield from compare(images, samples.still_images(np.asarray(batch["image"])), self.feature_size).items()
        yield from self.generation_cost(stage, seconds)
