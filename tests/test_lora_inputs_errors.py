"""LoRA inputs that cannot be applied are located errors before any weights load (the plan and
`mergetui validate`), a base named differently is only a warning, a pickled adapter needs
--allow-bin, and `mergetui inspect` shows an adapter's rank, alpha and targets.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mergetui.demo import make_tiny_model
from mergetui.errors import UserError

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from lora_helpers import make_adapter, tensors  # noqa: E402


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lora-errors")
    base = make_tiny_model(root / "base", seed=0)
    small = make_tiny_model(root / "small", seed=0, hidden_size=32, intermediate_size=64)
    gpt2 = make_tiny_model(root / "gpt2", "gpt2", seed=0)
    targets = ["q_proj", "v_proj"]
    return {
        "root": root,
        "base": base,
        "adapter": make_adapter(base, root / "adapter", r=2, lora_alpha=4, target_modules=targets),
        "small-adapter": make_adapter(
            small, root / "small-adapter", r=2, lora_alpha=4, target_modules=targets
        ),
        "gpt2-adapter": make_adapter(
            gpt2, root / "gpt2-adapter", r=2, lora_alpha=4, target_modules=["c_attn"]
        ),
    }


def variant(kit: dict[str, Path], name: str, **config_changes: object) -> Path:
    """A copy of the good adapter with its config changed."""
    folder = kit["root"] / name
    if not folder.exists():
        shutil.copytree(kit["adapter"], folder)
        config_path = folder / "adapter_config.json"
        config = json.loads(config_path.read_text())
        config.update(config_changes)
        config_path.write_text(json.dumps(config))
    return folder


def recipe_with(kit: dict[str, Path], adapter: Path, name: str) -> Path:
    path = kit["root"] / f"{name}.toml"
    path.write_text(
        '[merge]\nmethod = "passthrough"\n\n'
        f'[models.m]\nsource = "{kit["base"]}"\nlora = "{adapter}"\n'
    )
    return path


def plan_error(kit: dict[str, Path], adapter: Path, name: str, **options: object) -> UserError:
    from mergetui.merge.plan import make_plan
    from mergetui.recipe.io import load_recipe

    recipe = recipe_with(kit, adapter, name)
    with pytest.raises(UserError) as info:
        make_plan(load_recipe(recipe), recipe_dir=recipe.parent, out=kit["root"] / name, **options)
    return info.value


def problems_of(kit: dict[str, Path], adapter: Path, name: str) -> list:
    from mergetui.recipe.io import load_recipe
    from mergetui.recipe.validate import validate_recipe

    recipe = recipe_with(kit, adapter, name)
    return validate_recipe(load_recipe(recipe), base_dir=recipe.parent)


@pytest.mark.parametrize(
    ("name", "changes", "words"),
    [
        ("dora", {"use_dora": True}, "DoRA"),
        ("ia3", {"peft_type": "IA3"}, "IA3"),
        ("loha", {"peft_type": "LOHA"}, "LOHA"),
        ("trained-biases", {"bias": "all"}, "trains the base's biases"),
    ],
)
def test_unsupported_kinds_say_what_is_supported(
    kit: dict[str, Path], name: str, changes: dict, words: str
) -> None:
    adapter = variant(kit, name, **changes)
    error = plan_error(kit, adapter, name)
    assert error.where == "models.m.lora"
    assert words in error.message
    assert error.fix is not None and "supported: plain LoRA" in error.fix
    [problem] = [p for p in problems_of(kit, adapter, name) if p.is_error]
    assert problem.where == "models.m.lora" and words in problem.message


def test_adapter_for_another_size_is_an_error(kit: dict[str, Path]) -> None:
    error = plan_error(kit, kit["small-adapter"], "size")
    assert error.where == "models.m.lora"
    assert "another model size" in error.message and "q_proj" in error.message
    errors = [p for p in problems_of(kit, kit["small-adapter"], "size") if p.is_error]
    assert [p.where for p in errors] == ["models.m.lora"]


def test_adapter_for_another_architecture_is_an_error(kit: dict[str, Path]) -> None:
    error = plan_error(kit, kit["gpt2-adapter"], "arch")
    assert error.where == "models.m.lora"
    assert "another architecture" in error.message and "c_attn" in error.message


def test_another_base_name_is_only_a_warning(kit: dict[str, Path]) -> None:
    from mergetui.merge.plan import make_plan
    from mergetui.recipe.io import load_recipe

    adapter = variant(kit, "renamed", base_model_name_or_path="someone/Other-7B")
    problems = problems_of(kit, adapter, "renamed")
    assert not [p for p in problems if p.is_error]
    [warning] = [p for p in problems if p.where == "models.m.lora"]
    assert "someone/Other-7B" in warning.message
    recipe = recipe_with(kit, adapter, "renamed")
    plan = make_plan(load_recipe(recipe), recipe_dir=recipe.parent, out=kit["root"] / "renamed-out")
    assert any("someone/Other-7B" in notice for notice in plan.notices)
    assert "models: m + LoRA renamed" in plan.summary_lines()  # the dry run says it


def test_missing_adapter_is_located(kit: dict[str, Path]) -> None:
    error = plan_error(kit, kit["root"] / "nowhere", "missing")
    assert error.where == "models.m.lora" and "not on this machine" in error.message
    [problem] = [p for p in problems_of(kit, kit["root"] / "nowhere", "missing") if p.is_error]
    assert problem.where == "models.m.lora"


def test_pickled_adapter_needs_allow_bin_and_then_merges_the_same(kit: dict[str, Path]) -> None:
    from safetensors.torch import load_file

    from mergetui.merge.plan import make_plan
    from mergetui.merge.runner import run_merge
    from mergetui.recipe.io import load_recipe

    pickled = kit["root"] / "pickled"
    shutil.copytree(kit["adapter"], pickled)
    state = load_file(pickled / "adapter_model.safetensors")
    torch.save(state, pickled / "adapter_model.bin")
    (pickled / "adapter_model.safetensors").unlink()

    error = plan_error(kit, pickled, "pickled")
    assert error.where == "models.m.lora"
    assert "pickle" in error.message and error.fix is not None and "--allow-bin" in error.fix

    merged = {}
    for name, adapter, allow_bin in (("bin", pickled, True), ("st", kit["adapter"], False)):
        recipe = recipe_with(kit, adapter, f"pickled-{name}")
        plan = make_plan(
            load_recipe(recipe),
            recipe_dir=recipe.parent,
            out=kit["root"] / f"pickled-{name}-out",
            allow_bin=allow_bin,
        )
        run_merge(plan)
        merged[name] = tensors(kit["root"] / f"pickled-{name}-out")
    assert all(torch.equal(merged["bin"][k], merged["st"][k]) for k in merged["st"])
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged["st"][q], tensors(kit["base"])[q])


# -- mergetui inspect ----------------------------------------------------------------------------


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    import mergetui.cli

    monkeypatch.setattr(mergetui.cli, "COMMAND_MODULES", ("inspect",))
    monkeypatch.setenv("COLUMNS", "200")

    def run(*argv: str) -> tuple[int, str, str]:
        code = mergetui.cli.main(list(argv))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def test_inspect_an_adapter_folder(cli, kit: dict[str, Path]) -> None:
    code, out, _ = cli("inspect", str(kit["adapter"]))
    assert code == 0
    assert "rank             2" in out
    assert "alpha            4 (scale 2 = alpha / r)" in out
    assert "q_proj, v_proj" in out
    code, out, _ = cli("inspect", str(kit["adapter"]), "--json")
    data = json.loads(out)
    assert (data["rank"], data["alpha"], data["scale"]) == (2, 4.0, 2.0)
    assert data["target_modules"] == ["q_proj", "v_proj"]
    assert data["lora_tensors"] == 8  # q and v in each of 4 layers


def test_inspect_a_model_with_its_adapter(cli, kit: dict[str, Path]) -> None:
    code, out, _ = cli("inspect", f"{kit['base']}+{kit['adapter']}", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["architecture"] == "LlamaForCausalLM"
    assert data["adapter"]["rank"] == 2 and data["adapter"]["fits"] is True
    code, out, _ = cli("inspect", f"{kit['base']}+{kit['adapter']}")
    assert "the adapter fits this model" in out and "q_proj, v_proj" in out
    code, _, err = cli("inspect", f"{kit['base']}+{kit['small-adapter']}")
    assert code == 1 and "another model size" in err


# -- adapters on the Hub -------------------------------------------------------------------------


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from hub_server import serve_for_test

    monkeypatch.setenv("MERGETUI_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("COLUMNS", "200")
    yield from serve_for_test(tmp_path, monkeypatch)


def test_a_hub_adapter_is_pulled_then_found_in_the_cache(
    kit: dict[str, Path], hub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import mergetui.cli
    from mergetui.checkpoints.locate import find_local

    hub.add_repo("org/adapter", kit["adapter"])
    recipe = tmp_path / "hub.toml"
    recipe.write_text(
        '[merge]\nmethod = "passthrough"\noutput = "out"\n\n'
        f'[models.m]\nsource = "{kit["base"]}"\nlora = "org/adapter"\n'
    )
    assert mergetui.cli.main(["merge", str(recipe)]) == 0
    err = capsys.readouterr().err
    assert "the adapter of model m: org/adapter is not on this machine" in err
    assert find_local("org/adapter") is not None
    local = recipe_with(kit, kit["adapter"], "hub-local")
    assert mergetui.cli.main(["merge", str(local), "--out", str(tmp_path / "local")]) == 0
    ours, want = tensors(tmp_path / "out"), tensors(tmp_path / "local")
    assert all(torch.equal(ours[k], want[k]) for k in want)
    assert mergetui.cli.main(["merge", str(recipe), "--force"]) == 0
    assert "downloading" not in capsys.readouterr().err
