"""mergetui.merge.publish against the Hub stand-in: a merged folder pushed with a card that lacks
`base_model` goes up with the parents its saved recipe names."""

from __future__ import annotations

from pathlib import Path

import pytest
from hub_server import TEST_TOKEN, HubServer, serve_for_test
from hub_server import merged_folder as _merged_folder

from mergetui.merge import publish


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    yield from serve_for_test(tmp_path, monkeypatch)


def test_push_adds_base_model_to_a_card_without_it(
    hub: HubServer, llama_family: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import yaml

    monkeypatch.setenv("HF_TOKEN", TEST_TOKEN)
    folder = _merged_folder(tmp_path, llama_family["base"], None)
    publish.push_merge(folder, "tester/no-card")
    text = hub.repos["tester/no-card"].files["README.md"].decode()
    front = yaml.safe_load(text.split("---")[1])
    assert front["base_model"] == ["org/parent-a", "org/parent-b"]
    assert "merge" in front["tags"]
    assert not (folder / "README.md").exists()  # the folder itself is left as it was
