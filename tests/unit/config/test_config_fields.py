"""One config layer: every field of each trainer config is reachable from params.yaml.

Each trainer config (VAE, DiT, DPO) is built from its params section by `config.shared_fields`,
which copies the same-named fields and refuses a trainer field that neither the section holds nor
the stage sets. These tests change each copied field in the params and check that the trainer
config sees the change, so a field added to one layer and missed in the other fails here."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest

from stepvideo import config
from stepvideo.config import shared_fields
from stepvideo.stages.dit import DIT_SET_BY_STAGE, dit_train_config
from stepvideo.stages.dpo import DPO_SET_BY_STAGE, dpo_train_config
from stepvideo.stages.finetune import FINETUNE_SET_BY_STAGE, finetune_train_config
from stepvideo.stages.vae import VAE_SET_BY_STAGE, vae_train_config
from stepvideo.training.dit_trainer import DiTTrainConfig
from stepvideo.training.dpo_trainer import DPOTrainConfig
from stepvideo.training.vae_trainer import VAETrainConfig

# a valid other value for each string field (a new string field must be added here)
OTHER_STRINGS = {"lr_schedule": {"cosine": "constant", "constant": "cosine"},
                 "timestep_sampling": {"logit_normal": "uniform", "uniform": "shifted", "shifted": "uniform"},
                 "precision": {"auto": "fp32"}, "resolution": {"full": "low", "low": "full"}}


# fields whose other value needs a companion change to stay valid
COMPANIONS = {"perceptual_weight": {"perceptual_backbone_path": "backbone.pt"}}


def changed(name: str, value):
    """A different valid value for params field `name` (its current value `value`)."""
    if name in ("crop_size", "eval_size"):  # multiples of 16
        return value + 16
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value + 0.25 if value < 0.5 else value / 2
    if isinstance(value, list):
        return [v / 2 for v in value]
    if isinstance(value, dict):
        return {"1x8x8": 3}
    if isinstance(value, str):
        if name not in OTHER_STRINGS:
            pytest.fail(f"no other value for string field {name!r}: add it to OTHER_STRINGS")
        return OTHER_STRINGS[name][value]
    if value is None:  # `float | None` (still_share)
        return 0.5
    pytest.fail(f"{name}: no rule for a {type(value).__name__}")


def normal(value):
    return tuple(value) if isinstance(value, list) else value


class FakeCache:
    """What dit_train_config reads from a latent cache."""

    resolutions = {"full": None, "low": None}
    items = [{"kind": "image", "quality": 0.9}, {"kind": "video", "quality": 0.8}]
    meta = {"z_channels": 8}
    text = SimpleNamespace(encoders={"llm": {"dim": 32}, "clip": {"dim": 16}})

    def select(self, split, kinds):
        return [i for i, item in enumerate(self.items) if item["kind"] in kinds]


def build_vae(p: config.Params):
    return vae_train_config(p)[1]


def build_dit(p: config.Params):
    return dit_train_config(p, "t2v_lowres", FakeCache(), None)


def build_dpo(p: config.Params):
    return dpo_train_config(p.dpo, Path("sft"), Path("sft"), 0)


def build_finetune(p: config.Params):
    import tempfile

    from stepvideo.models.dit import DiTConfig, StepVideoDiT

    folder = Path(tempfile.mkdtemp())  # a real (tiny) DiT folder: the LoRA targets are checked against its weights
    StepVideoDiT(DiTConfig.preset("demo", in_channels=8, out_channels=8, caption_channels=[32, 16])).save_pretrained(folder)
    return finetune_train_config(p, FakeCache(), folder)


CASES = {"vae": (VAETrainConfig, VAE_SET_BY_STAGE, build_vae),
         "finetune": (DiTTrainConfig, FINETUNE_SET_BY_STAGE, build_finetune),
         "t2v_lowres": (DiTTrainConfig, DIT_SET_BY_STAGE, build_dit),
         "dpo": (DPOTrainConfig, DPO_SET_BY_STAGE, build_dpo)}


@pytest.mark.parametrize("section", sorted(CASES))
def test_every_trainer_field_comes_from_params_or_the_stage(section):
    target, set_by_stage, _ = CASES[section]
    have = {f.name for f in dataclasses.fields(getattr(config.Params(), section))}
    missing = [f.name for f in dataclasses.fields(target) if f.name not in have | set(set_by_stage)]
    assert not missing, f"{target.__name__} fields missing from params.{section}: {missing}"


@pytest.mark.parametrize("section", sorted(CASES))
def test_each_copied_field_reaches_the_trainer(section):
    target, set_by_stage, build = CASES[section]
    base = config.Params()
    names = sorted(shared_fields(target, getattr(base, section), set_by_stage))
    assert len(names) >= 15  # the bulk of each trainer config comes from params
    for name in names:
        p = config.Params()
        value = changed(name, getattr(getattr(p, section), name))
        setattr(getattr(p, section), name, value)
        for other, v in COMPANIONS.get(name, {}).items():
            setattr(getattr(p, section), other, v)
        assert normal(getattr(build(p), name)) == normal(value), f"params.{section}.{name} does not reach the trainer"


def test_a_trainer_field_without_a_params_field_is_refused():
    @dataclasses.dataclass
    class Trainer:
        lr: float = 1.0
        new_knob: int = 3

    with pytest.raises(TypeError, match="new_knob"):
        shared_fields(Trainer, config.VAEParams())
    assert shared_fields(Trainer, config.VAEParams(), set_by_stage=("new_knob",)) == {"lr": 1.0e-3}


def test_the_stage_set_fields_are_really_set_by_the_stage():
    p = config.Params()
    p.vae.perceptual_backbone_path = ""
    p.t2v_lowres.deepspeed_config = ""
    assert build_vae(p).perceptual_backbone_path is None
    cfg = build_dit(p)
    assert cfg.deepspeed_config is None and cfg.split == "train" and cfg.model["in_channels"] == 8
    assert cfg.model["caption_channels"] == [32, 16]
    dpo = build_dpo(p)
    assert dpo.init_from == "sft" and dpo.reference == "sft" and dpo.seed == p.dpo.seed
