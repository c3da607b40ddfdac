"""Tiny real checkpoints made offline (for the tests) and the `mergetui demo` family.

`tiny` builds small random models of every architecture and the byte-level BPE tokenizer the tests
use; `family` is the demo's trained family (a Llama base and its prose and code fine-tunes, shipped
as weights in `mergetui/data/demo_family/`); `corpus` the texts they learned from; `train` the code
that trained them (`python -m mergetui.demo.train`); `make` writes a demo folder (`make_demo`).
"""

from typing import Any

from mergetui.demo.tiny import (
    ARCHITECTURES,
    BOS_ID,
    BOS_TOKEN,
    CHAT_TEMPLATE,
    DEFAULT_VOCAB_SIZE,
    EOS_ID,
    EOS_TOKEN,
    IM_START,
    MIN_TOKENIZER_VOCAB,
    PAD_ID,
    PAD_TOKEN,
    SPECIAL_TOKENS,
    make_tiny_model,
    train_tokenizer,
)

# The demo folder's names load on first use, so `python -m mergetui.demo.corpus` (or .train) runs
# its module without the package having imported it already.
_FROM_MAKE = ("DEMO_MARKER", "DEMO_MODELS", "DEMO_RECIPES", "DemoInfo", "make_demo")


def __getattr__(name: str) -> Any:
    if name in _FROM_MAKE:
        from mergetui.demo import make

        return getattr(make, name)
    raise AttributeError(f"module 'mergetui.demo' has no attribute {name!r}")


__all__ = [
    "ARCHITECTURES",
    "BOS_ID",
    "BOS_TOKEN",
    "CHAT_TEMPLATE",
    "DEFAULT_VOCAB_SIZE",
    "DEMO_MARKER",
    "DEMO_MODELS",
    "DEMO_RECIPES",
    "EOS_ID",
    "EOS_TOKEN",
    "IM_START",
    "MIN_TOKENIZER_VOCAB",
    "PAD_ID",
    "PAD_TOKEN",
    "SPECIAL_TOKENS",
    "DemoInfo",
    "make_demo",
    "make_tiny_model",
    "train_tokenizer",
]
