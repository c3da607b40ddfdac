"""MoE recipes that cannot be assembled: each is one located line (file:line, what, fix), exit 1,
and nothing written; validate reports the same problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from mergetui.cli import main


def experts_yaml(sources: list[Path], prompts: bool = True) -> str:
    lines = []
    for index, source in enumerate(sources):
        lines.append(f"  - source_model: {source}")
        if prompts:
            lines.append(f'    positive_prompts: ["prompt number {index}"]')
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def others(tiny_model_factory) -> dict[str, Path]:
    return {
        "qwen2": tiny_model_factory("qwen2", seed=0),
        "wide": tiny_model_factory("llama", seed=5, intermediate_size=96),
    }


CASES = {
    # name: (the config's body after base_model, the line the error names, words of the message)
    "no experts": ("gate_mode: hidden\nexperts: []\n", 3, "at least one expert"),
    "experts_per_token": (
        "experts_per_token: 3\nexperts:\n{ab}",
        2,
        "is 3, and there are 2 experts",
    ),
    "zero experts_per_token": ("experts_per_token: 0\nexperts:\n{ab}", 2, "is 0"),
    "gate mode": ("gate_mode: smart\nexperts:\n{ab}", 2, "not a gate mode"),
    "prompts missing": (
        "gate_mode: hidden\nexperts:\n{ab_bare}",
        4,
        "gate mode 'hidden' routes by prompts",
    ),
    "same prompts": (
        'experts:\n  - source_model: {a}\n    positive_prompts: ["x"]\n'
        '  - source_model: {b}\n    positive_prompts: ["x"]\n',
        2,
        "all have the same prompts",
    ),
    "shared experts on mixtral": (
        "architecture: mixtral\nexperts:\n{ab}shared_experts:\n  - source_model: {a}\n"
        '    positive_prompts: ["s"]\n',
        8,
        "Mixtral has none",
    ),
    "unknown architecture": ("architecture: deepseek\nexperts:\n{ab}", 2, "Mixtral and Qwen MoE"),
    "another architecture": (
        "experts:\n{a_qwen}",
        5,
        "is a qwen2 model and the base is a llama model",
    ),
    "another shape": ("experts:\n{a_wide}", 5, "the base's is [128, 64]"),
    "qwen2 without shared expert": ("experts:\n{q}", 2, "needs one shared expert"),
    "unknown key": ("experts:\n{ab}gates: 2\n", 7, "unknown key 'gates'"),
    "missing model": ("experts:\n{a_missing}", 5, "is not on this machine"),
    "two revisions": (
        'experts:\n  - source_model: org/m@a@b\n    positive_prompts: ["x"]\n',
        3,
        "more than one '@'",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_error_is_located_exits_1_and_writes_nothing(
    case: str,
    llama_family: dict[str, Path],
    others: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    body, line, words = CASES[case]
    a, b = llama_family["a"], llama_family["b"]
    base = others["qwen2"] if case == "qwen2 without shared expert" else llama_family["base"]
    text = f"base_model: {base}\n" + body.format(
        a=a,
        b=b,
        ab=experts_yaml([a, b]),
        ab_bare=experts_yaml([a, b], prompts=False),
        a_qwen=experts_yaml([a, others["qwen2"]]),
        a_wide=experts_yaml([a, others["wide"]]),
        a_missing=experts_yaml([a, tmp_path / "nowhere"]),
        q=experts_yaml([others["qwen2"], others["qwen2"]]),
    )
    config = tmp_path / "moe.yml"
    config.write_text(text)
    out = tmp_path / "out"
    assert main(["merge", str(config), "--out", str(out)]) == 1
    err = capsys.readouterr().err.replace("\n", " ")
    assert f"{config}:{line}" in err, err
    assert " ".join(words.split()) in " ".join(err.split()), err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["moe.yml"]
    assert main(["validate", str(config)]) == 1
    assert f"{config}:{line}" in capsys.readouterr().out


def test_toml_errors_name_toml_keys(llama_family: dict[str, Path], tmp_path: Path, capsys) -> None:
    config = tmp_path / "moe.toml"
    config.write_text(
        f'[moe]\nbase = "{llama_family["base"]}"\nexperts_per_token = 1\n\n'
        f'[[moe.experts]]\nsource = "{llama_family["a"]}"\nsource_model = "x"\n'
    )
    assert main(["merge", str(config), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert f"{config}:7" in err and "unknown key 'source_model'" in err
    assert "positive_prompts" in err  # the fix lists our keys


def test_hub_model_missing_offline_is_one_line(
    llama_family: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = tmp_path / "moe.yml"
    config.write_text(
        f"base_model: {llama_family['base']}\nexperts:\n"
        + experts_yaml([llama_family["a"]])
        + '  - source_model: someone/not-on-this-machine\n    positive_prompts: ["b"]\n'
    )
    assert main(["merge", str(config), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "offline mode" in err and "someone/not-on-this-machine" in err
    assert not (tmp_path / "out").exists()


def test_degenerate_gates_are_named() -> None:
    import torch

    from mergetui.merge.moe_run import degenerate_gates

    apart = torch.eye(2, 8).repeat(3, 1, 1)  # (layers, experts, hidden)
    assert degenerate_gates(apart) is None
    alike = apart.clone()
    alike[1, 1] = alike[1, 0] + 0.01 * alike[1, 1]
    assert degenerate_gates(alike) == (
        "the gates of layer 1 are nearly alike: some experts will rarely be picked "
        "(make each expert's prompts more distinct)"
    )


def test_an_moe_recipe_read_as_a_merge_recipe_says_what_it_is(
    llama_family: dict[str, Path], tmp_path: Path
) -> None:
    """The app and the merge-recipe readers do not take an MoE recipe: they say so, and how to run
    it, instead of naming a key a merge recipe lacks; a broken merge recipe keeps its own error."""
    from mergetui.errors import UserError
    from mergetui.recipe.io import load_recipe

    config = tmp_path / "moe.yml"
    config.write_text(
        f"base_model: {llama_family['base']}\nexperts:\n" + experts_yaml([llama_family["a"]])
    )
    with pytest.raises(UserError, match="this is an MoE recipe") as caught:
        load_recipe(config)
    assert "mergetui merge FILE --out DIR" in str(caught.value.fix)
    plain = tmp_path / "plain.yml"
    plain.write_text(f"merge_method: linear\nmodels:\n  - model: {llama_family['a']}\ngates: 1\n")
    with pytest.raises(UserError, match="unknown key 'gates'"):
        load_recipe(plain)


def test_mixed_architectures_flag_is_refused(
    llama_family: dict[str, Path], tmp_path: Path, capsys
) -> None:
    config = tmp_path / "moe.yml"
    config.write_text(
        f"base_model: {llama_family['base']}\nexperts:\n"
        + experts_yaml([llama_family["a"], llama_family["b"]])
    )
    out = tmp_path / "out"
    assert main(["merge", str(config), "--out", str(out), "--allow-mixed-architectures"]) == 1
    assert "does not apply to an MoE" in capsys.readouterr().err
    assert not out.exists()
