# Copyright 2026 The storm_hf authors. Licensed under the Apache License, Version 2.0.
"""Convert a LLaVA-OneVision checkpoint (SigLIP + Qwen2) into a STORM checkpoint.

Keeps the image encoder and the LLM (with its tokenizer and its `<image>` / `<video>` tokens), and the
encoder layer LLaVA-OneVision reads (`vision_feature_layer`, e.g. -1: the last layer before SigLIP's
post-LayerNorm), so the converted model sees the same vision features on the same frames; the
projector is replaced by STORM's pixel shuffle + Linear and a temporal encoder is added, both freshly
initialised (train them with the alignment stage). LLaVA-OneVision's SigLIP runs at 384 px, a 27 x 27
patch grid that a 2x2 pixel shuffle cannot split; the encoder's position embeddings are therefore
interpolated (bicubic) to `--image-size` (448 by default: 32 x 32 patches, the paper's setting).

    python -m storm_hf.integrations.convert_llava_onevision LLAVA_PATH_OR_ID OUTPUT_DIR [--image-size 448]
        [--temporal-pool-k 4] [--temporal-num-layers 1]
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F

from ..configuration_storm import StormConfig
from ..modeling_storm import StormForConditionalGeneration
from ..processing_storm import StormProcessor
from ..video_processing_storm import StormVideoProcessor


def interpolate_position_embeddings(weight: torch.Tensor, new_grid: int) -> torch.Tensor:
    """(old_grid**2, dim) learned patch position embeddings -> (new_grid**2, dim), bicubic on the grid."""
    old_grid = math.isqrt(weight.shape[0])
    if old_grid * old_grid != weight.shape[0]:
        raise ValueError(f"Position embeddings of {weight.shape[0]} patches are not a square grid.")
    if old_grid == new_grid:
        return weight
    grid = weight.reshape(1, old_grid, old_grid, -1).permute(0, 3, 1, 2).float()  # (1, dim, old, old)
    grid = F.interpolate(grid, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(new_grid * new_grid, -1).to(weight.dtype)


def convert_llava_onevision_to_storm(llava_name_or_path, output_dir=None, image_size: int = 448, **storm_options):
    """Returns `(model, processor)`; saves both to `output_dir` when given. Anything that is not a
    LLaVA-OneVision checkpoint (by its config's `model_type`) is refused with a ValueError before loading."""
    from transformers import AutoConfig, AutoTokenizer, LlavaOnevisionForConditionalGeneration

    try:
        source_config = AutoConfig.from_pretrained(llava_name_or_path)
    except (OSError, ValueError) as error:
        raise ValueError(f"{llava_name_or_path}: not a LLaVA-OneVision checkpoint (no readable config.json: "
                         f"{str(error).splitlines()[0]}).") from error
    if source_config.model_type != "llava_onevision":
        raise ValueError(f"{llava_name_or_path}: not a LLaVA-OneVision checkpoint (its config says model_type "
                         f"{source_config.model_type!r}, expected 'llava_onevision'); nothing was converted.")
    llava = LlavaOnevisionForConditionalGeneration.from_pretrained(llava_name_or_path, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(llava_name_or_path)
    source = llava.config
    vision_config = source.vision_config.to_dict()
    vision_config["image_size"] = image_size
    layer = source.vision_feature_layer
    if not isinstance(layer, int):
        raise ValueError(f"{llava_name_or_path}: reads several encoder layers ({layer}); STORM's projector reads one, "
                         "so this checkpoint cannot be converted.")
    if getattr(source, "vision_feature_select_strategy", "full") != "full":
        raise ValueError(f"{llava_name_or_path}: vision_feature_select_strategy "
                         f"{source.vision_feature_select_strategy!r} drops the first patch token; STORM's pixel "
                         "shuffle needs the full patch grid, so this checkpoint cannot be converted.")
    config = StormConfig(
        vision_config=vision_config, text_config=source.text_config.to_dict(), video_token_id=source.video_token_id,
        image_token_id=source.image_token_id, vision_feature_layer=layer,
        tie_word_embeddings=source.tie_word_embeddings, **storm_options,
    )
    config.vision_config._name_or_path = config.text_config._name_or_path = str(llava_name_or_path)
    model = StormForConditionalGeneration(config)

    vision_state = llava.model.vision_tower.state_dict()
    key = "embeddings.position_embedding.weight"
    grid = image_size // config.vision_config.patch_size
    vision_state[key] = interpolate_position_embeddings(vision_state[key], grid)
    missing, unexpected = model.model.vision_tower.load_state_dict(vision_state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]  # a buffer sized by the new grid
    if missing or unexpected:
        raise ValueError(f"{llava_name_or_path}: the vision tower does not match SigLIP's layout "
                         f"(missing {missing}, unexpected {unexpected}).")
    model.model.language_model.load_state_dict(llava.model.language_model.state_dict())
    model.lm_head.load_state_dict(llava.lm_head.state_dict())
    del llava

    model.set_generation_tokens(tokenizer)  # answers end at <|im_end|>, as in the chat template
    video_processor = StormVideoProcessor(size={"height": image_size, "width": image_size})
    processor = StormProcessor.from_config(config, video_processor, tokenizer)
    if output_dir is not None:
        model.save_pretrained(output_dir)
        processor.save_pretrained(output_dir)
    return model, processor


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("llava", help="LLaVA-OneVision checkpoint: a local folder or a Hub id")
    parser.add_argument("output_dir")
    parser.add_argument("--image-size", type=int, default=448)
    parser.add_argument("--temporal-pool-k", type=int, default=4)
    parser.add_argument("--temporal-num-layers", type=int, default=1)
    args = parser.parse_args()
    try:
        convert_llava_onevision_to_storm(args.llava, args.output_dir, image_size=args.image_size,
                                         temporal_pool_k=args.temporal_pool_k,
                                         temporal_num_layers=args.temporal_num_layers)
    except ValueError as error:
        parser.exit(2, f"error: {error}\n")
    print(f"saved STORM checkpoint and processor to {args.output_dir}")


if __name__ == "__main__":
    main()
