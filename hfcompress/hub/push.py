"""Pushing a model folder to the Hub with ``huggingface_hub`` (``create_repo`` + one ``create_commit``).

The same calls work on huggingface_hub 0.3x (the transformers 4.57 stack, HTTP through requests) and
2.x (the transformers 5 stack, HTTP through httpx2, large files through Xet storage when hf_xet is installed).

The token comes from ``HF_TOKEN`` or the saved login (``huggingface_hub.get_token``) and is only
ever handed to ``HfApi``: it is never printed, logged, or written into a card, report or record.
Everything that can be checked locally (folder, patterns, card metadata, token presence, offline
mode) is checked before the first request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Optional

from huggingface_hub import CommitOperationAdd, HfApi, ModelCard, constants, get_token
from huggingface_hub.utils import HfHubHTTPError, filter_repo_objects
from huggingface_hub.utils._paths import DEFAULT_IGNORE_PATTERNS as HUB_IGNORE_PATTERNS

try:  # huggingface_hub 2.x sends its requests through httpx2, 0.x through requests
    from httpx2 import TransportError as NetworkError
except ImportError:
    from requests import RequestException as NetworkError

from ..artifacts import TRITON_REPOSITORY_DIR
from ..errors import ConfigError, HFCompressError
from .validation import check_repo_id, validate_card_data

# Pickles the Trainer leaves beside a model (training_args.bin from save_model; optimizer.pt, scheduler.pt,
# rng_state*.pth in checkpoints): loading one runs arbitrary code, so they are never published.
# (fnmatch's * also matches "/", so "*.pt" covers every folder.) pytorch_model.bin weights are not matched.
PICKLE_PATTERNS = ["training_args.bin", "*/training_args.bin", "*.pt", "*.pth", "*.pkl", "*.pickle"]
# Training leftovers that never belong in a model repo: Trainer checkpoints, hidden files and
# directories (stage markers, .work, caches), TensorBoard runs, lock files and the pickles above; and an
# export's Triton model repository (a copy of its graph for a Triton server: push that folder itself to publish it).
DEFAULT_IGNORE_PATTERNS = ["checkpoint-*", "*/checkpoint-*", ".*", "*/.*", "runs/*", "*.lock", *PICKLE_PATTERNS,
                           f"{TRITON_REPOSITORY_DIR}/*", f"*/{TRITON_REPOSITORY_DIR}/*"]


def is_pickle(path: str) -> bool:
    """Whether a repo path (``a/b.pt``) is one of the pickles that are never published."""
    return any(fnmatch(path, pattern) for pattern in PICKLE_PATTERNS)


class PushError(HFCompressError):
    """The Hub refused or failed the upload."""


@dataclass
class PushConfig:
    """Where and how to publish a model folder on the Hub."""

    repo_id: str = field(metadata={"help": "Hub repo to push to, 'namespace/name' (created if missing)."})
    private: bool = field(default=False, metadata={"help": "Create the repo private (an existing repo keeps its visibility)."})
    revision: Optional[str] = field(default=None, metadata={"help": "Branch to commit to; created from main if missing. Default: main."})
    create_pr: bool = field(default=False, metadata={"help": "Open a pull request with the commit instead of committing to the branch."})
    commit_message: Optional[str] = field(default=None, metadata={"help": "Commit title; default: 'Upload <folder name> with hfcompress'."})
    allow_patterns: Optional[list[str]] = field(default=None, metadata={"help": "Upload only files matching these glob patterns."})
    ignore_patterns: list[str] = field(default_factory=list, metadata={"help": f"Glob patterns to skip, added to {DEFAULT_IGNORE_PATTERNS}."})
    allow_no_card: bool = field(default=False, metadata={"help": "Push a folder without README.md (otherwise: run `hfcompress card` first)."})

    def __post_init__(self):
        check_repo_id(self.repo_id)
        if self.revision is not None and not self.revision.strip():
            raise ConfigError("revision is empty: give a branch name or leave it out for main")

    @property
    def all_ignore_patterns(self) -> list[str]:
        return [*DEFAULT_IGNORE_PATTERNS, *self.ignore_patterns]


@dataclass
class UploadPlan:
    """The files that would be uploaded (path in the repo -> size in bytes), and where to."""

    folder: Path
    repo_id: str
    files: dict[str, int]

    def describe(self, cfg: PushConfig) -> str:
        target = f"{self.repo_id}" + (f" @ {cfg.revision}" if cfg.revision else "") + (" (pull request)" if cfg.create_pr else "")
        target += " [private if created]" if cfg.private else ""
        lines = [f"{len(self.files)} files, {_mb(sum(self.files.values()))} -> {target}"]
        width = max(len(_mb(s)) for s in self.files.values())
        lines += [f"  {_mb(size):>{width}}  {path}" for path, size in self.files.items()]
        return "\n".join(lines)


def _mb(size: int) -> str:
    return f"{size / 1e6:.2f} MB" if size >= 10_000 else f"{size} B"


def plan_upload(folder: str | Path, cfg: PushConfig) -> UploadPlan:
    """The files ``push_to_hub`` commits: ``upload_folder``'s file walk and pattern filter, checked locally."""
    folder = Path(folder)
    if folder.is_file():
        raise ConfigError(f"{folder} is a file, not a folder: give the directory of a saved model (or a `hfcompress card --output` folder)")
    if not folder.is_dir():
        raise ConfigError(f"folder {folder} does not exist: give the directory of a saved model (or a `hfcompress card --output` folder)")
    if not (folder / "config.json").is_file() and not any(folder.rglob("*.onnx")):
        raise ConfigError(f"{folder} holds no model (no config.json, no .onnx file): give a model directory")
    if not (folder / "README.md").is_file() and not cfg.allow_no_card:
        raise ConfigError(f"{folder} has no README.md: run `hfcompress card {folder}` first, or pass --allow-no-card")
    files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
    kept = filter_repo_objects(files, allow_patterns=cfg.allow_patterns, ignore_patterns=[*cfg.all_ignore_patterns, *HUB_IGNORE_PATTERNS])
    plan = UploadPlan(folder, cfg.repo_id, {path: files[path].stat().st_size for path in kept})
    if not plan.files:
        raise ConfigError(f"no file in {folder} matches allow_patterns={cfg.allow_patterns} outside the ignored patterns: loosen the patterns")
    if "README.md" in plan.files:
        try:
            card = ModelCard.load(folder / "README.md")
        except ValueError as e:
            raise ConfigError(f"{folder / 'README.md'}: invalid card metadata ({str(e).splitlines()[0]}): regenerate it with `hfcompress card`") from None
        validate_card_data(card.data)
    return plan


def push_to_hub(folder: str | Path, cfg: PushConfig, dry_run: bool = False) -> dict:
    """Create the repo (and branch) if needed and upload ``folder`` in one commit.

    Returns a record without secrets: repo_id, files, commit_url, commit_oid, pr_url (or dry_run: True).
    """
    plan = plan_upload(folder, cfg)
    record = {"repo_id": cfg.repo_id, "revision": cfg.revision, "create_pr": cfg.create_pr, "private": cfg.private, "files": plan.files}
    if dry_run:
        return {**record, "dry_run": True}
    if constants.HF_HUB_OFFLINE:
        raise ConfigError("HF_HUB_OFFLINE is set: unset it (or set HF_HUB_OFFLINE=0) to push to the Hub")
    token = get_token()
    if not token:
        raise ConfigError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (a token with write access)")
    api = HfApi(token=token)  # the endpoint is huggingface_hub's: HF_ENDPOINT as read when it was imported
    # One commit of exactly the planned files: upload_folder on huggingface_hub 2.x may split a folder into
    # several commits and refuses a pull request against a branch (create_commit opens it against `revision`),
    # and its own filter would be a second source of truth for what is published.
    operations = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=plan.folder / path) for path in plan.files]
    try:
        repo_id = api.create_repo(cfg.repo_id, private=cfg.private, exist_ok=True, repo_type="model").repo_id
        if cfg.revision and cfg.revision != constants.DEFAULT_REVISION:
            api.create_branch(repo_id, branch=cfg.revision, exist_ok=True)
        info = api.create_commit(
            repo_id=repo_id,
            operations=operations,
            revision=cfg.revision,
            create_pr=cfg.create_pr,
            commit_message=cfg.commit_message or f"Upload {Path(folder).resolve().name} with hfcompress",
        )
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        hint = {401: "the token was rejected: check HF_TOKEN or log in again",
                403: "the token cannot write to this repo: use a write token or a namespace you own"}.get(status, "see the Hub's message")
        raise PushError(f"push to {cfg.repo_id} failed (HTTP {status}): {str(e).splitlines()[0]}; {hint}") from None
    except NetworkError as e:
        raise PushError(f"push to {cfg.repo_id} failed: cannot reach {api.endpoint} ({_root_cause(e)}); "
                        "check the network connection, proxy settings and HF_ENDPOINT") from None
    except ValueError as e:  # metadata rejected by the Hub's validator, malformed server replies
        raise PushError(f"push to {cfg.repo_id} failed: {' '.join(str(e).split())}") from None
    return {**record, "repo_id": repo_id, "commit_url": info.commit_url, "commit_oid": info.oid, "pr_url": info.pr_url}


def _root_cause(error: BaseException) -> str:
    """The innermost error of a chain (``[Errno 111] Connection refused``), not the HTTP client's wrappers around it."""
    while (inner := error.__cause__ or error.__context__) is not None:
        error = inner
    return " ".join(f"{type(error).__name__}: {error}".split())
