"""Tokenizers in both directions: HF folder -> GGUF vocabulary, GGUF -> HF tokenizer files.

    load_vocab(src_dir, vocab_size=None) -> Vocab        (hf_read)
    add_vocab_to_gguf(writer, vocab)                      (gguf_io)
    vocab_from_gguf(path) -> Vocab                        (gguf_io, through edge.formats.gguf)
    write_hf_tokenizer(vocab, out_dir)                    (hf_write)

No torch/transformers/sentencepiece at import time: this is on the GGUF path.
"""

from .gguf_io import add_vocab_to_gguf, vocab_from_gguf
from .hf_read import load_vocab
from .hf_write import write_hf_tokenizer
from .model import BPE, SPM, TokenType, Vocab
from .safety import check_vocab

__all__ = [
    "Vocab",
    "TokenType",
    "BPE",
    "SPM",
    "load_vocab",
    "add_vocab_to_gguf",
    "vocab_from_gguf",
    "write_hf_tokenizer",
    "check_vocab",
]
