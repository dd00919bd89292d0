"""A small byte-level BPE tokenizer with Qwen's special tokens, trained locally.

The real Qwen tokenizers cannot be downloaded here, so tiny weights get a tokenizer trained
on the prompt templates the pipelines use plus a word list. It keeps Qwen's byte-level scheme
and the special tokens the Qwen2-VL processor and the Qwen-Image pipelines look up by name.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AddedToken, Qwen2Tokenizer

# Order matters only for readability; ids are assigned after the learned vocabulary.
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Z-Image's pipeline asks for thinking tags in its chat template.
EXTRA_TOKENS = ["<think>", "</think>"]

# Qwen3-style chat template, reduced to what ZImagePipeline uses (user turn + generation
# prompt with optional thinking block).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}"
    "{{ '<think>\n\n</think>\n\n' }}{% endif %}{% endif %}"
)

_CORPUS = """
Describe the key features of the input image (color, shape, size, texture, objects, background),
then explain how the user's text instruction should alter or modify the image. Generate a new image
that meets the user's requirements while maintaining consistency with the original input where
appropriate. Picture 1: Picture 2: Picture 3: system user assistant
make it warmer cooler brighter darker change the jacket to navy blue and add soft rim lighting
replace the background with a beach at sunset remove the person add a hat to the person
turn the photo into an anime illustration keep the product label sharp and readable
brand colours red green blue yellow orange purple black white gray pink brown gold silver
a photo of a cat dog woman man model bottle shoe dress shirt bag watch chair table car
high quality detailed sharp realistic lighting shadow texture skin fabric leather metal wood
low quality blurry noisy distorted oversaturated bad anatomy watermark text logo
"""


def tiny_vl_configs(tokenizer, **text) -> tuple[dict, dict, dict]:
    """The tiny vision-language encoders' shared sizes over this tokenizer: (text_config, the vision
    config's common part, the special token ids the model config names). ``text``: per-model keys."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    text_config = {
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "vocab_size": len(tokenizer),
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        **text,
    }
    vision = {"depth": 2, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": 16}
    tokens = {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
    }
    return text_config, vision, tokens


def train_tiny_qwen_tokenizer(vocab_size: int = 1024) -> Qwen2Tokenizer:
    """Train a byte-level BPE and wrap it as a transformers ``Qwen2Tokenizer``."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(QWEN_SPECIAL_TOKENS) - len(EXTRA_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    vocab = dict(bpe.get_vocab())
    merges = _merges_of(bpe)
    # Special tokens go into the vocab itself: transformers 5 renumbers added tokens whose ids
    # are not part of the model's vocab, which would break the ids written in model configs.
    for token in QWEN_SPECIAL_TOKENS + EXTRA_TOKENS:
        vocab.setdefault(token, len(vocab))

    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [AddedToken(t, special=True) for t in QWEN_SPECIAL_TOKENS[1:]]}
    )
    tokenizer.add_tokens([AddedToken(t, special=False) for t in EXTRA_TOKENS])
    tokenizer.chat_template = CHAT_TEMPLATE
    for token in QWEN_SPECIAL_TOKENS + EXTRA_TOKENS:
        if tokenizer.convert_tokens_to_ids(token) != vocab[token]:
            raise RuntimeError(f"tokenizer renumbered {token!r}")
    return tokenizer


def _merges_of(bpe: Tokenizer) -> list[tuple[str, str]]:
    import json

    model = json.loads(bpe.to_str())["model"]
    return [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
