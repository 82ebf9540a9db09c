"""Mixtures: the components of `config.data` and what every sample of a run looks like.

`components` lists the mixture (one component when `data.mixture` is empty), `layout_for` the
common sample layout of their sources, and `channels` the image channels a config will produce
(for sizing models; configs call it, so this module imports neither Grain nor JAX).
"""

from __future__ import annotations

from data_pipelines.core import samples as samples_lib


def components(data_cfg) -> dict[str, tuple[str, str, float]]:
    """Mixture components: name -> (source kind, path, weight)."""
    if not data_cfg.mixture:
        return {data_cfg.source: (data_cfg.source, data_cfg.path, 1.0)}
    out = {}
    for name, comp in data_cfg.mixture.items():
        weight = float(comp.get("weight", 1.0))
        if weight < 0:
            raise ValueError(f"data.mixture.{name}.weight must be >= 0, got {weight}")
        if weight > 0:
            out[name] = (comp.get("source", name), comp.get("path", ""), weight)
    if not out:
        raise ValueError("data.mixture: every component has weight 0")
    return out


def layout_for(sources: dict, data_cfg) -> samples_lib.Layout:
    """The common sample layout of all components (keys a component lacks are filled)."""
    kinds = {name: (s.latent, s.text_features, getattr(s, "video", False)) for name, s in sources.items()}
    if len(set(kinds.values())) > 1:
        raise ValueError(f"data.mixture: components disagree on (latents, text features, video): {kinds}")
    channels = data_cfg.channels
    if channels == -1:
        native = {name: s.channels for name, s in sources.items()}
        if len(set(native.values())) > 1:
            raise ValueError(f"data.channels: components have different channels {native}; set data.channels")
        channels = next(iter(native.values()))
    if channels not in (1, 3):
        raise ValueError(f"data.channels must be 1, 3 or -1, got {channels}")
    if data_cfg.tags:
        tags = tuple(t.strip() for t in data_cfg.tags.split(",") if t.strip())
    else:
        tags = tuple(sorted({t for s in sources.values() for t in s.tags}))
    latent, text_features, video = next(iter(kinds.values()))
    return samples_lib.Layout(
        channels=channels,
        max_text_len=data_cfg.max_text_len,
        scene_labels=any(s.scene_labels for s in sources.values()),
        tags=tags,
        defect_aware=bool(data_cfg.defects.enabled),
        max_defect_area=float(data_cfg.defects.max_area),
        latent=latent,
        text_features=text_features,
        video=video,
        max_shots=int(data_cfg.video.max_shots) if video else 1,
        joint_edits=len({bool(getattr(s, "edits", False)) for s in sources.values()}) > 1,
        edit_labels=all(getattr(s, "edit_labels", True) for s in sources.values()),
    )


def channels(data_cfg) -> int:
    """Image channels the pipeline will produce for this config (for sizing models)."""
    if data_cfg.channels != -1:
        return int(data_cfg.channels)
    kinds = {path if kind == "reward_pairs" else kind for kind, path, _ in components(data_cfg).values()}
    return 1 if kinds == {"digits"} else 3
