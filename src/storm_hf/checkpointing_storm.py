# Copyright 2026 The storm_hf authors. Licensed under the Apache License, Version 2.0.
"""Checkpoint plumbing for STORM models, kept out of the modeling file so that it reads as the architecture.

`StormCheckpointMixin` (on `StormPreTrainedModel`): safetensors-only `save_pretrained` that saves over a
folder all-or-nothing and keeps what it does not replace, the remote-code `auto_map`, a Hub model card,
`push_to_hub`, and a `from_pretrained` that never unpickles and names the checkpoint in its errors.
`StormFromPartsMixin` (on `StormForConditionalGeneration`): `from_vision_text_pretrained`, STORM from an
existing image encoder and LLM.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile

import torch

from .configuration_storm import StormConfig

# Files a save of the model replaces in a folder it saves over: the weights (single or sharded, safetensors
# or old pickles) and their index. Anything else there is kept.
_REPLACED_WEIGHTS = re.compile(r"^(model|pytorch_model)(-\d{5}-of-\d{5})?\.(safetensors|bin)(\.index\.json)?$")


_NOT_RECORDED = object()


def _model_class(cls: type) -> type:
    """``cls``, or for a class torch made around a model (FSDP2's `FSDP<Name>` subclass) the model class it wraps."""
    return next(c for c in cls.__mro__ if not c.__module__.startswith("torch."))


class StormCheckpointMixin:
    """Saving, loading and publishing; mixed into `StormPreTrainedModel` before `PreTrainedModel`."""

    # What `save_pretrained` writes into config.json so that the Auto classes find the flat remote code.
    _remote_auto_map = {
        "AutoConfig": "configuration_storm.StormConfig",
        "AutoModel": "modeling_storm.StormModel",
        "AutoModelForImageTextToText": "modeling_storm.StormForConditionalGeneration",
        "AutoModelForMultimodalLM": "modeling_storm.StormForConditionalGeneration",  # pipeline("any-to-any")
    }

    def save_pretrained(self, save_directory, *args, **kwargs):
        """As transformers' (safetensors, sharded above `max_shard_size`), plus the remote-code files
        (configuration_storm.py, modeling_storm.py, selective_scan.py) and an `auto_map` for AutoConfig,
        AutoModel, AutoModelForImageTextToText and AutoModelForMultimodalLM, so `trust_remote_code=True` loads it
        without storm_hf.

        Over an existing folder the save is all-or-nothing and keeps everything it does not replace:
        the new files are written to a fresh sibling folder, every other entry of the folder (processor and
        tokenizer files, a README, `checkpoint-N` folders, an `adapter_model.safetensors`, ...) is moved
        into it by rename, and the folders are then swapped by rename. Only the files the save rewrites and
        the model weights it replaces (`model*.safetensors`, `pytorch_model*.bin` and their index) go. An
        interrupted save puts everything back and leaves the old checkpoint whole.
        """
        if kwargs.get("safe_serialization") is False:
            raise ValueError("StormPreTrainedModel.save_pretrained writes safetensors only (no pickle files).")
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **self._remote_auto_map}
        target = os.path.abspath(save_directory)
        if kwargs.get("push_to_hub") or not os.path.isdir(target) or not os.listdir(target):
            return self._save_with_remote_code(save_directory, *args, **kwargs)
        parent = os.path.dirname(target)
        staging = tempfile.mkdtemp(prefix=os.path.basename(target) + ".saving-", dir=parent)
        previous = os.path.join(parent, os.path.basename(staging).replace(".saving-", ".previous-"))
        carried = []  # entries moved from the folder into the staging folder
        try:
            result = self._save_with_remote_code(staging, *args, **kwargs)
            written = set(os.listdir(staging))
            for name in sorted(os.listdir(target)):
                if name not in written and not _REPLACED_WEIGHTS.match(name):
                    os.rename(os.path.join(target, name), os.path.join(staging, name))
                    carried.append(name)
            os.rename(target, previous)
            os.rename(staging, target)
        except BaseException:
            if not os.path.isdir(target) and os.path.isdir(previous):
                os.rename(previous, target)
            for name in carried:
                if os.path.lexists(os.path.join(staging, name)):
                    os.rename(os.path.join(staging, name), os.path.join(target, name))
            shutil.rmtree(staging, ignore_errors=True)
            raise
        shutil.rmtree(previous, ignore_errors=True)  # only what the new save replaced
        return result

    def _save_with_remote_code(self, save_directory, *args, **kwargs):
        # STORM checkpoints hold the model's own parameter names. transformers reverts on save the renamings it
        # recorded at load (`_weight_conversions`), and under DeepSpeed ZeRO-3 its loader records every renaming it
        # knows, the legacy ones included: the LLM's and image encoder's weights were saved as
        # model.language_model.model.* and model.vision_tower.vision_model.*. No renaming is reverted here.
        recorded = self.__dict__.get("_weight_conversions", _NOT_RECORDED)
        self.__dict__["_weight_conversions"] = []
        try:
            result = super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            if recorded is _NOT_RECORDED:
                del self.__dict__["_weight_conversions"]
            else:
                self.__dict__["_weight_conversions"] = recorded
        model_class = _model_class(type(self))
        if model_class is not type(self) and kwargs.get("is_main_process", True):
            from transformers.dynamic_module_utils import custom_object_save

            custom_object_save(model_class, save_directory)  # its file and the files it imports; auto_map is set
        return result

    @classmethod
    def is_remote_code(cls) -> bool:
        # FSDP2's `fully_shard` gives a sharded model a class of torch's making (FSDPStormForConditionalGeneration,
        # defined in torch.distributed.fsdp): transformers would save torch's FSDP files as the remote code and
        # name them in auto_map. For such a class `_save_with_remote_code` saves the Storm class's code instead.
        return super().is_remote_code() and _model_class(cls) is cls

    def model_card(self, repo_id: str, base_models: list[str] | None = None) -> str:
        """The README.md `push_to_hub` uploads: Hub metadata (library, pipeline tag, base models, tags), the
        token-reduction settings and how to load the model."""
        c = self.config
        bases = base_models or [n for n in (c.vision_config._name_or_path, c.text_config._name_or_path) if n]
        lines = ["---", "library_name: transformers", "pipeline_tag: image-text-to-text", "tags:", "- storm",
                 "- video", "- mamba", "- video-llm"]
        if bases:
            lines += ["base_model:"] + [f"- {name}" for name in bases]
        lines += ["---", "", f"# {repo_id.split('/')[-1]}", "",
                  "A STORM video LLM (image encoder -> 2x2 pixel shuffle + Linear -> bidirectional Mamba temporal "
                  "encoder -> token reduction -> LLM), saved with storm_hf.", "",
                  "| setting | value |", "|---|---|",
                  f"| image encoder | {c.vision_config.model_type}, {c.vision_config.image_size} px |",
                  f"| LLM | {c.text_config.model_type}, hidden {c.text_config.hidden_size} |",
                  f"| temporal encoder | {c.temporal_num_layers} layer(s), "
                  f"{'bidirectional' if c.temporal_bidirectional else 'forward-only'}, d_state {c.temporal_d_state} |",
                  f"| temporal pooling k | {c.temporal_pool_k} |", f"| spatial pooling p | {c.spatial_pool_p} |",
                  f"| test-time sampling s | {c.temporal_sample_s} |",
                  f"| visual tokens for 32 frames | {c.num_visual_tokens(32)} (256 per frame before reduction at "
                  "448 px) |", "", "## Load", "", "```python",
                  "from transformers import AutoModelForImageTextToText, AutoProcessor",
                  f'model = AutoModelForImageTextToText.from_pretrained("{repo_id}", trust_remote_code=True)',
                  f'processor = AutoProcessor.from_pretrained("{repo_id}", trust_remote_code=True)',
                  "```", "", "With `pip install storm_hf` and `import storm_hf`, `trust_remote_code` is not needed.", ""]
        return "\n".join(lines)

    def push_to_hub(self, repo_id: str, *, commit_message=None, commit_description=None, private=None, token=None,
                    revision=None, create_pr=False, max_shard_size="50GB", tags=None, base_models=None) -> str:
        """Upload what `save_pretrained` writes (safetensors, config, remote code) plus a model card
        (`model_card`). Save the processor to the same repo with `processor.push_to_hub(repo_id)`."""
        from transformers.utils import hub

        repo_id = hub.hf_api().create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder, max_shard_size=max_shard_size)
            card = self.model_card(repo_id, base_models)
            if tags:
                card = card.replace("- video-llm", "- video-llm\n" + "\n".join(f"- {t}" for t in tags), 1)
            with open(os.path.join(folder, "README.md"), "w", encoding="utf-8") as f:
                f.write(card)
            return self._upload_modified_files(
                folder, repo_id, files_timestamps={}, commit_message=commit_message or "Upload STORM model",
                token=token, create_pr=create_pr, revision=revision, commit_description=commit_description,
            )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """As transformers', but weights are read from safetensors only: loading never unpickles. A local
        folder holding only pickle weights (pytorch_model.bin, .pt, .pth, .ckpt) is refused by name, and
        unreadable or mismatched weights raise a ValueError naming the checkpoint."""
        path = str(pretrained_model_name_or_path)
        if os.path.isdir(path):
            files = os.listdir(os.path.join(path, kwargs.get("subfolder", "") or ""))
            pickles = sorted(f for f in files if f.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl")))
            if pickles and not any(f.endswith(".safetensors") or f.endswith(".safetensors.index.json") for f in files):
                raise ValueError(
                    f"{path}: only pickle weight files ({', '.join(pickles)}); storm_hf loads safetensors only, "
                    "because unpickling can run arbitrary code. Convert them with a trusted loader and "
                    "save_pretrained (which writes safetensors)."
                )
        kwargs["use_safetensors"] = True
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except RuntimeError as error:
            if "ignore_mismatched_sizes" in str(error):
                raise ValueError(
                    f"{path}: the weights do not have the shapes its config.json describes (see the load report "
                    "above for the tensors); the checkpoint or its config is corrupt or from another model."
                ) from error
            raise
        except Exception as error:
            if type(error).__name__ == "SafetensorError":
                raise ValueError(f"{path}: a safetensors weight file is unreadable or truncated ({error}).") from error
            raise


class StormFromPartsMixin:
    """Building STORM from an existing image encoder and LLM; mixed into `StormForConditionalGeneration`."""

    @classmethod
    def from_vision_text_pretrained(
        cls,
        vision_model_name_or_path: str,
        text_model_name_or_path: str,
        *,
        video_token: str = "<video>",
        image_token: str = "<image>",
        return_processor: bool = False,
        dtype: torch.dtype | None = None,
        **storm_options,
    ):
        """STORM built from an existing image encoder and LLM, with a fresh projector and temporal encoder.

        Args:
            vision_model_name_or_path: a SigLIP or CLIP checkpoint (vision-only or dual-encoder).
            text_model_name_or_path: a Qwen2 or Llama causal-LM checkpoint with its tokenizer.
            video_token, image_token: placeholders added to the tokenizer if missing (embeddings are resized).
            return_processor: also return a matching `StormProcessor` (the LLM's tokenizer with the added
                tokens, frames sized and normalised for the image encoder).
            **storm_options: `StormConfig` fields (temporal_num_layers, temporal_pool_k, ...).
        Returns:
            The model, or `(model, processor)` with ``return_processor=True``.

        Weights are read from safetensors only. The model is first built with random weights, then the
        encoder's and the LLM's are copied in, so peak memory is about twice the model for a moment.
        """
        from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer
        from transformers.tokenization_utils_base import AddedToken

        from .processing_storm import StormProcessor
        from .video_processing_storm import StormVideoProcessor

        vision_config = AutoConfig.from_pretrained(vision_model_name_or_path)
        vision_config = getattr(vision_config, "vision_config", vision_config)  # dual encoders: the vision half
        text_config = AutoConfig.from_pretrained(text_model_name_or_path)
        tokenizer = AutoTokenizer.from_pretrained(text_model_name_or_path)
        # The placeholders, and the chat template's turn markers (Llama tokenizers lack Qwen2's), as single tokens.
        missing = [t for t in (video_token, image_token, "<|im_start|>", "<|im_end|>") if t not in tokenizer.get_vocab()]
        if missing:
            tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in missing], special_tokens=True)
        storm_options.setdefault("tie_word_embeddings", bool(getattr(text_config, "tie_word_embeddings", False)))
        config = StormConfig(
            vision_config=vision_config.to_dict(), text_config=text_config.to_dict(),
            video_token_id=tokenizer.convert_tokens_to_ids(video_token),
            image_token_id=tokenizer.convert_tokens_to_ids(image_token), **storm_options,
        )
        config.vision_config._name_or_path = str(vision_model_name_or_path)
        config.text_config._name_or_path = str(text_model_name_or_path)
        model = cls(config)

        vision = AutoModel.from_pretrained(vision_model_name_or_path, use_safetensors=True)
        vision = getattr(vision, "vision_model", vision)  # a dual encoder's vision half
        model.model.vision_tower.load_state_dict(vision.state_dict())
        del vision
        language = AutoModelForCausalLM.from_pretrained(text_model_name_or_path, use_safetensors=True)
        model.model.language_model.load_state_dict(language.model.state_dict())
        model.lm_head.load_state_dict(language.lm_head.state_dict())
        del language
        if len(tokenizer) > config.text_config.vocab_size:
            model.resize_token_embeddings(len(tokenizer))
        model.set_generation_tokens(tokenizer)
        if dtype is not None:
            model = model.to(dtype)
        if not return_processor:
            return model
        side = vision_config.image_size
        mean, std = _image_normalisation(vision_model_name_or_path, vision_config)
        video_processor = StormVideoProcessor(size={"height": side, "width": side}, image_mean=mean, image_std=std)
        processor = StormProcessor.from_config(config, video_processor, tokenizer, video_token=video_token,
                                               image_token=image_token)
        return model, processor


def _image_normalisation(vision_model_name_or_path, vision_config):
    """The encoder's pixel mean/std: from its preprocessor_config.json when it is a local folder that has
    one, else SigLIP's 0.5/0.5 or CLIP's OpenAI statistics by model type."""
    import json

    path = os.path.join(str(vision_model_name_or_path), "preprocessor_config.json")
    if os.path.isfile(path):
        with open(path) as f:
            stored = json.load(f)
        if "image_mean" in stored and "image_std" in stored:
            return list(stored["image_mean"]), list(stored["image_std"])
    if "clip" in vision_config.model_type:
        return [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
    return [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]


__all__ = ["StormCheckpointMixin", "StormFromPartsMixin"]
