"""The llmcompressor recipe of each strategy (imported in the compression environment only)."""

from __future__ import annotations

from quantize.config import GROUP_SIZE, CompressConfig, Strategy

IGNORE = ["lm_head"]  # the output projection stays in full precision (and tied embeddings with it)


def recipe(config: CompressConfig) -> list:
    from llmcompressor.modifiers.gptq import GPTQModifier
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform import AWQModifier, SmoothQuantModifier

    if config.strategy is Strategy.SMOOTHQUANT_W8A8:
        return [SmoothQuantModifier(smoothing_strength=config.migration_strength),
                GPTQModifier(targets="Linear", scheme="W8A8", ignore=IGNORE)]
    if config.strategy is Strategy.AWQ_W4A16:
        return [AWQModifier(),
                QuantizationModifier(targets="Linear", scheme="W4A16_ASYM", ignore=IGNORE)]
    assert GROUP_SIZE == 128  # the W4A16 preset schemes group weights by 128
    return [GPTQModifier(targets="Linear", scheme="W4A16", ignore=IGNORE)]
