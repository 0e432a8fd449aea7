"""Tokenizer names llama.cpp 0c1e570 knows (src/llama-vocab.cpp, llama_vocab::impl::load).

A name outside these lists makes llama.cpp refuse to load the file, so we refuse it first with the
list. tests/edge/formats/test_validate.py checks both tuples against the vendored llama-vocab.cpp.
"""

# tokenizer.ggml.model
TOKENIZER_MODELS = ("bert", "gemma4", "gpt2", "hybriddna", "llama", "no_vocab", "none", "plamo2", "rwkv", "t5", "test",
                    "whitespace")  # fmt: skip
NO_VOCAB = ("no_vocab", "none")
BPE_MODELS = ("gpt2", "hybriddna", "whitespace", "gemma4")  # LLAMA_VOCAB_TYPE_BPE: need merges and a known pre

# tokenizer.ggml.pre (only read for BPE vocabularies; absent means "default")
PRE_TOKENIZERS = (
    "a.x-4.0", "afmoe", "bailingmoe", "bailingmoe2", "bloom", "chameleon", "chatglm-bpe", "codeshell", "cohere2moe",
    "command-r", "dbrx", "deepseek-coder", "deepseek-llm", "deepseek-r1-qwen", "deepseek-v3", "default", "exaone",
    "exaone-moe", "exaone4", "f2llmv2", "falcon", "falcon-h1", "falcon3", "gemma4", "gigachat", "glm4", "glm5",
    "gpt-2", "gpt-4o", "gpt3-finnish", "granite-docling", "granite-embed-multi-311m", "granite-embed-multi-97m",
    "grok-2", "hunyuan", "hunyuan-dense", "hy_v4", "jais", "jais-2", "jina-de", "jina-es", "jina-v1-en",
    "jina-v2-code", "jina-v2-de", "jina-v2-es", "jina-v5-nano", "joyai-llm", "kanana2", "kimi-k2", "kormo", "laguna",
    "lfm2", "llada-moe", "llama-bpe", "llama-v3", "llama3", "llama4", "megrez", "mellum", "mellum2", "midm-2.0",
    "minerva-7b", "minicpm5", "minimax-m2", "modern-bert", "mpt", "olmo", "phi-2", "pixtral", "poro-chat", "qwen2",
    "qwen35", "refact", "roberta-bpe", "sarvam-moe", "seed-coder", "smaug-bpe", "smollm", "solar-open", "spark2_5",
    "stablelm2", "starcoder", "superbpe", "talkie", "tekken", "tiny_aya", "trillion", "ufakzeka", "viking",
    "whitespace", "youtu",
)  # fmt: skip

# BPE pre-tokenizers that add BOS by default, and those that work on raw UTF-8 (no GPT-2 byte map)
PRE_ADD_BOS = ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
               "jina-v5-nano", "tekken", "chameleon", "gemma4", "granite-embed-multi-311m")  # fmt: skip
PRE_NO_BOS = ("chatglm-bpe", "glm4", "glm5")
PRE_RAW_UTF8 = ("gemma4", "granite-embed-multi-311m", "sarvam-moe", "whitespace")
