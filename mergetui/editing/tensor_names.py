"""Representative tensor names: what the grid asks the core to resolve for each row and group."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from mergetui.checkpoints.layers import block_kind, layer_index, with_layer_index
from mergetui.editing.cells import ALL, ATTENTION, MLP, REST, Group


@dataclass(frozen=True)
class TensorNames:
    """Representative tensor names: what the grid asks the core to resolve for each row and group.

    Layer names are layer 0's; other layers are renumbered with `with_layer_index`. Taken from a real
    checkpoint when one can be read, so filters resolve against the architecture's real names.
    """

    embed: str
    head: str
    attention: tuple[str, ...]
    mlp: tuple[str, ...]
    rest: tuple[str, ...]

    @classmethod
    def from_names(cls, names: Iterable[str]) -> TensorNames | None:
        """Pick the representatives from a checkpoint's tensor names; None if there is no layer 0."""
        names = sorted(names)
        groups: dict[str, list[str]] = {ATTENTION: [], MLP: [], REST: []}
        embed = head = final_norm = None
        for name in names:
            kind = block_kind(name)
            index = layer_index(name)
            if index is None:
                if kind == "embedding" and embed is None:
                    embed = name
                elif kind == "head" and head is None:
                    head = name
                elif kind == "norm" and final_norm is None:
                    final_norm = name
                continue
            if index != 0:
                continue
            if kind == "attention":
                groups[ATTENTION].append(name)
            elif kind == "mlp":
                groups[MLP].append(name)
            else:
                groups[REST].append(name)
        if not (groups[ATTENTION] or groups[MLP] or groups[REST]):
            return None
        fallback = groups[REST] or groups[MLP] or groups[ATTENTION]
        return cls(
            embed=embed or LLAMA_NAMES.embed,
            head=head or final_norm or LLAMA_NAMES.head,
            attention=tuple(groups[ATTENTION] or fallback),
            mlp=tuple(groups[MLP] or fallback),
            rest=tuple(groups[REST] or fallback),
        )

    def group_names(self, group: Group) -> tuple[str, ...]:
        return {ATTENTION: self.attention, MLP: self.mlp, REST: self.rest, ALL: self.rest}[group]

    def layer_name(self, group: Group, layer: int) -> str:
        return with_layer_index(self.group_names(group)[0], layer)

    def template(self, group: Group) -> str:
        """The group's representative name with `{i}` for the layer (the core's template form)."""
        marker = 987654321
        return with_layer_index(self.group_names(group)[0], marker).replace(str(marker), "{i}")

    def all_layer_names(self) -> tuple[str, ...]:
        return self.attention + self.mlp + self.rest


LLAMA_NAMES = TensorNames(
    embed="model.embed_tokens.weight",
    head="lm_head.weight",
    attention=tuple(
        f"model.layers.0.self_attn.{p}.weight" for p in ("q_proj", "k_proj", "v_proj", "o_proj")
    ),
    mlp=tuple(f"model.layers.0.mlp.{p}.weight" for p in ("gate_proj", "up_proj", "down_proj")),
    rest=(
        "model.layers.0.input_layernorm.weight",
        "model.layers.0.post_attention_layernorm.weight",
    ),
)
