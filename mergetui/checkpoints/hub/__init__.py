"""The Hugging Face Hub: search, model info, remote safetensors headers, download and upload.

Everything goes through the real `huggingface_hub` client (imported inside the functions, so
importing this package stays light), with its settings read at call time (`client`). Failures a
person can act on (401, gated, 404, rate limited, no network, a timeout, a download cut short)
become `UserError`s that say what to do (`errors`); no request waits without end (`net`).

The modules, one job each:

- `client`: HF_ENDPOINT, HF_TOKEN, offline mode, redaction, the headers and URLs requests use;
- `net`: timeouts, retries, resumable file transfers;
- `errors`: `hub_error`, from whatever was raised to one line and a fix;
- `search`: `search_models`, `model_info` (`HubModel`, `HubFile`);
- `remote`: `read_remote_checkpoint` from safetensors headers read by Range requests;
- `download`: `download_repo` into the Hugging Face cache, resumable;
- `card`, `push`: `push_folder`, one commit, with the model card's `base_model`.

What the rest of mergetui uses is importable from the package itself.
"""

from mergetui.checkpoints.hub.card import card_with_parents
from mergetui.checkpoints.hub.client import (
    check_online,
    hub_endpoint,
    hub_token,
    is_offline,
    offline_reason,
    redact,
)
from mergetui.checkpoints.hub.download import (
    DEFAULT_INCLUDE,
    DownloadProgress,
    download_repo,
    safe_repo_path,
    select_files,
)
from mergetui.checkpoints.hub.errors import hub_error
from mergetui.checkpoints.hub.net import HubOffline, HubTimeout
from mergetui.checkpoints.hub.push import UploadProgress, push_folder
from mergetui.checkpoints.hub.remote import RemoteCheckpoint, fetch_bytes, read_remote_checkpoint
from mergetui.checkpoints.hub.search import (
    SORTS,
    TAG_FILTERS,
    HubFile,
    HubModel,
    model_info,
    search_models,
)

__all__ = [
    "DEFAULT_INCLUDE",
    "SORTS",
    "TAG_FILTERS",
    "DownloadProgress",
    "HubFile",
    "HubModel",
    "HubOffline",
    "HubTimeout",
    "RemoteCheckpoint",
    "UploadProgress",
    "card_with_parents",
    "check_online",
    "download_repo",
    "fetch_bytes",
    "hub_endpoint",
    "hub_error",
    "hub_token",
    "is_offline",
    "model_info",
    "offline_reason",
    "push_folder",
    "read_remote_checkpoint",
    "redact",
    "safe_repo_path",
    "search_models",
    "select_files",
]
