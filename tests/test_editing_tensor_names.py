"""Representative tensor names taken from a checkpoint's names."""

from __future__ import annotations

from mergetui.editing.cells import ATTENTION, MLP
from mergetui.editing.tensor_names import TensorNames


def test_tensor_names_from_a_gpt2_style_checkpoint() -> None:
    names = TensorNames.from_names(
        [
            "transformer.wte.weight",
            "transformer.h.0.attn.c_attn.weight",
            "transformer.h.0.mlp.c_fc.weight",
            "transformer.h.0.ln_1.weight",
            "transformer.h.1.attn.c_attn.weight",
            "transformer.ln_f.weight",
        ]
    )
    assert names.embed == "transformer.wte.weight"
    assert names.head == "transformer.ln_f.weight"  # tied: no lm_head, the final norm stands in
    assert names.layer_name(ATTENTION, 7) == "transformer.h.7.attn.c_attn.weight"
    assert names.template(MLP) == "transformer.h.{i}.mlp.c_fc.weight"
