"""Load a checkpoint for generation: find it, check it fits, then the tokenizer and the weights.

Called from a worker thread (the app) or the CLI; `on_progress(stage, fraction)` reports each step,
and the weights step reports per tensor group as transformers loads them. Every failure a person can
act on (not found, no config, custom code not allowed, out of memory, a broken file) becomes a
`UserError` that says why; the caller goes on. torch and transformers are imported in here only.
"""

from __future__ import annotations

import gc
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergetui.chat.dtype import DtypeChoice, check_dtype_name, choose_dtype, stored_dtype
from mergetui.chat.memory import DeviceChoice
from mergetui.dtypes import dtype_code
from mergetui.errors import UserError
from mergetui.formatting import human_bytes

ProgressCallback = Callable[[str, float], None]
DEFAULT_CONTEXT = 2048
_PATCH_LOCK = threading.Lock()


@dataclass
class LoadedModel:
    """A model ready to generate: the transformers objects and what the UI shows about them."""

    name: str
    path: Path
    model: Any = field(repr=False)
    tokenizer: Any = field(repr=False)
    device: str
    dtype: str
    weights_bytes: int
    context_length: int
    seconds: float
    message: str = ""  # what the device choice wants the user to know
    has_chat_template: bool = False
    dtype_reason: str = ""  # why this dtype (auto's choice, or "asked for")

    def describe(self) -> str:
        template = "chat template" if self.has_chat_template else "plain prompt (no chat template)"
        return (
            f"{self.name} · {self.device} · {self.dtype} · {human_bytes(self.weights_bytes)} · "
            f"{template}"
        )

    def unload(self) -> None:
        """Drop the weights now (GPU memory is returned at once, not at the next collection)."""
        self.model = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # nothing to give back
            pass


def resolve_checkpoint(source: str | Path, base_dir: Path | None = None) -> Path:
    """A local folder for a path or a downloaded Hub id; UserError naming it when there is none."""
    from mergetui.checkpoints.locate import find_local, looks_like_hub_id

    text = str(source).strip()
    if not text:
        raise UserError("no model given", fix="name a checkpoint folder or a downloaded Hub id")
    if base_dir is not None:  # a recipe's model: the recipe path rule (mergetui.recipe.paths)
        from mergetui.recipe.paths import local_model_path

        candidate = local_model_path(text, base_dir)
    else:
        candidate = Path(text).expanduser()
    if candidate.is_dir():
        folder = candidate.resolve()
    else:
        found = find_local(text) if looks_like_hub_id(text) else None
        if found is None:
            raise UserError(
                "no such checkpoint folder"
                + (" (and not in the Hugging Face cache)" if looks_like_hub_id(text) else ""),
                where=text,
                fix="check the path, or download it first (the Checkpoints screen, or "
                "huggingface-cli download)",
            )
        folder = Path(found)
    if not (folder / "config.json").is_file():
        raise UserError(
            "not a model folder: there is no config.json",
            where=str(folder),
            fix="point at the folder that holds config.json and the weights",
        )
    return folder


def needs_remote_code(folder: Path) -> bool:
    """The config asks for code shipped with the checkpoint (an `auto_map` transformers lacks)."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(config, dict) or "auto_map" not in config:
        return False
    from transformers import CONFIG_MAPPING

    return config.get("model_type") not in CONFIG_MAPPING


@dataclass(frozen=True)
class _LoadPlan:
    """What the headers decide before anything heavy is read: the size, device and dtype."""

    size: int  # bytes of weights in the dtype they will be loaded in
    device: DeviceChoice
    dtype: DtypeChoice


def load_for_chat(
    source: str | Path,
    *,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    allow_bin: bool = False,
    base_dir: Path | None = None,
    on_progress: ProgressCallback | None = None,
    free_memory: dict[str, int | None] | None = None,
) -> LoadedModel:
    """Load tokenizer and weights on the chosen device; raises UserError with the reason.

    `dtype` is auto, float32, bfloat16 or float16 (`mergetui.chat.dtype`); a checkpoint that has
    only pytorch_model*.bin (a pickle) is refused unless `allow_bin`, as `inspect` and `merge` do.
    """
    report = on_progress or (lambda _stage, _fraction: None)
    started = time.perf_counter()
    requested = check_dtype_name(dtype)
    report("finding the checkpoint", 0.0)
    folder = resolve_checkpoint(source, base_dir)
    if needs_remote_code(folder) and not trust_remote_code:
        raise UserError(
            "this model needs its own Python code (trust_remote_code), which is off",
            where=str(folder),
            fix="turn on 'trust remote code' for this model only if you trust where it came from",
        )
    report("reading the headers", 0.02)
    plan = _plan(folder, device, requested, allow_bin, free_memory)
    target = plan.device.device

    report("loading the tokenizer", 0.05)
    import transformers

    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            str(folder), trust_remote_code=trust_remote_code
        )
    except Exception as exc:
        raise UserError(
            f"the tokenizer could not be loaded: {_short(exc)}",
            where=str(folder),
            fix="a chat needs tokenizer files (tokenizer.json or tokenizer.model) in the folder",
        ) from exc

    report(f"loading {human_bytes(plan.size)} of weights on {target}", 0.1)
    model = _load_weights(folder, plan, trust_remote_code, allow_bin, report)
    context = context_length_of(model, tokenizer)
    loaded_dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    report("ready", 1.0)
    return LoadedModel(
        name=folder.name,
        path=folder,
        model=model,
        tokenizer=tokenizer,
        device=target,
        dtype=loaded_dtype,
        weights_bytes=plan.size,
        context_length=context,
        seconds=time.perf_counter() - started,
        message=plan.device.message,
        has_chat_template=bool(getattr(tokenizer, "chat_template", None)),
        dtype_reason=plan.dtype.reason,
    )


def _plan(
    folder: Path,
    device: str,
    requested: str,
    allow_bin: bool,
    free_memory: dict[str, int | None] | None,
) -> _LoadPlan:
    """Read the headers (a .bin only with allow_bin), then pick the device and the dtype."""
    from mergetui.chat.memory import choose_device, needed_bytes, tensors_bytes
    from mergetui.checkpoints.inspect import open_checkpoint

    try:
        tensors = list(open_checkpoint(folder, allow_bin=allow_bin).tensors.values())
    except UserError:
        raise
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the weights: {exc}", where=str(folder)) from exc
    size = tensors_bytes(tensors, dtype_code(requested))
    choice = choose_device(device, needed_bytes(size), free=free_memory)
    dtype_choice = choose_dtype(
        requested,
        choice.device,
        stored_dtype((info.dtype, info.numel) for info in tensors),
        float32_need=needed_bytes(tensors_bytes(tensors, "F32")),
        free=choice.free_bytes,
    )
    if dtype_choice.name is not None:
        size = tensors_bytes(tensors, dtype_code(dtype_choice.name))
    return _LoadPlan(size, choice, dtype_choice)


def _load_weights(
    folder: Path,
    plan: _LoadPlan,
    trust_remote_code: bool,
    allow_bin: bool,
    report: ProgressCallback,
) -> Any:
    """The model in the planned dtype on the planned device, in eval mode."""
    import torch
    import transformers

    device = plan.device.device
    dtype: Any = getattr(torch, plan.dtype.name) if plan.dtype.name else "auto"
    try:
        with _weight_progress(lambda f: report("loading the weights", 0.1 + 0.85 * f)):
            model = transformers.AutoModelForCausalLM.from_pretrained(
                str(folder),
                dtype=dtype,
                trust_remote_code=trust_remote_code,
                # Never fall back to a pickle nobody allowed.
                use_safetensors=None if allow_bin else True,
            )
        report(f"moving to {device}", 0.96)
        model.to(device)
        model.eval()
    except torch.OutOfMemoryError as exc:
        raise UserError(
            f"out of memory loading the model on {device}",
            where=str(folder),
            fix="free some memory or load it on another device",
        ) from exc
    except Exception as exc:
        text = _short(exc)
        fix = None
        if "trust_remote_code" in text:
            fix = "turn on 'trust remote code' for this model only if you trust where it came from"
        raise UserError(
            f"the model could not be loaded: {text}", where=str(folder), fix=fix
        ) from exc
    return model


def context_length_of(model: Any, tokenizer: Any) -> int:
    """The longest input the model takes: its config's position limit, else the tokenizer's."""
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 10**7:
        return limit
    return DEFAULT_CONTEXT


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


@contextmanager
def _weight_progress(callback: Callable[[float], None]) -> Iterator[None]:
    """Report transformers' own per-tensor loading loop as a fraction (no bar on the terminal).

    transformers 5 walks the weights in `core_model_loading` under its `tqdm` helper; for the
    duration of one load that helper is replaced by a silent counting iterator. Older versions
    without it simply report no intermediate steps.
    """
    try:
        import importlib

        module = importlib.import_module("transformers.core_model_loading")
    except ImportError:
        yield
        return
    original = getattr(module, "tqdm", None)
    if original is None:
        yield
        return

    def counting(iterable: Any = None, *args: Any, **kwargs: Any) -> Any:
        if iterable is None:
            return original(iterable, *args, **kwargs)
        try:
            total = len(iterable)
        except TypeError:
            total = 0

        def walk() -> Iterator[Any]:
            for index, item in enumerate(iterable):
                if total:
                    callback(index / total)
                yield item
            callback(1.0)

        return walk()

    with _PATCH_LOCK:
        module.tqdm = counting
        try:
            yield
        finally:
            module.tqdm = original
