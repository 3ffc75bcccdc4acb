"""The MLflow model registry's policy: every registered-model name and alias in one place.

    VAE, TEXT_ENCODERS, DIT_STAGES[stage], DPO, BUNDLE   the registered models each stage writes
    LORA, FINETUNE                                      LoRA adapters (`finetune`; `dpo` with method lora,
                                                        tagged stage: dpo) and the fine-tuned DiT
    CANDIDATE, CHAMPION, PREVIOUS, CHALLENGER           the aliases (JUDGED: those promotion decided)

`promotion` moves the aliases (the gates, a person's promote/rollback, the lock); `retrain`
decides whether a scheduled retrain has anything to do. Runs, metrics, artifacts and the one
MlflowClient factory (`tracking.client`) live in `stepvideo.tracking`; this package builds on it.
"""

from __future__ import annotations

from stepvideo import tracking

VAE = "stepvideo-vae"
TEXT_ENCODERS = "stepvideo-text-encoders"
DIT_STAGES: dict[str, str] = {"t2i_pretrain": "stepvideo-dit-t2i", "t2v_lowres": "stepvideo-dit-t2v-lowres",
                              "t2v_highres": "stepvideo-dit-t2v-highres", "sft": "stepvideo-dit-sft"}
DPO = "stepvideo-dit-dpo"
BUNDLE = "stepvideo-t2v"  # the shippable generation bundle: the model whose aliases promotion moves
LORA = "stepvideo-lora"  # a LoRA adapter folder (peft format): `finetune`, or `dpo` with method lora (tag stage)
FINETUNE = "stepvideo-dit-finetune"  # the `finetune` stage's DiT (the base with the adapter merged, or fully tuned)

CANDIDATE, CHAMPION, PREVIOUS, CHALLENGER = "candidate", "champion", "previous", "challenger"
JUDGED = (CHAMPION, CHALLENGER)  # versions the promote stage has already decided on


RegistryUnavailable = tracking.RegistryUnavailable
missing_or_raise = tracking.missing_or_raise


def registered_version(name: str, weights: str, tag: str = "weights_hash") -> str | None:
    """'NAME/VERSION' of the newest registered version of `name` whose `tag` tag is `weights`; None
    when there is none. Raises RegistryUnavailable when the registry cannot be read."""
    import mlflow

    try:
        versions = tracking.client().search_model_versions(f"name = '{name}'")
    except mlflow.exceptions.MlflowException as e:
        missing_or_raise(e, f"versions of {name}")
        return None
    hits = [int(v.version) for v in versions if (v.tags or {}).get(tag) == weights]
    return f"{name}/{max(hits)}" if hits else None


__all__ = ["VAE", "TEXT_ENCODERS", "DIT_STAGES", "DPO", "BUNDLE", "LORA", "FINETUNE", "CANDIDATE", "CHAMPION", "PREVIOUS", "CHALLENGER",
           "JUDGED", "RegistryUnavailable", "missing_or_raise", "registered_version"]
