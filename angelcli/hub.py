"""What a hub says about a repo: its commit and its files with sizes and hashes (Hugging Face or ModelScope).

Hugging Face goes through the real huggingface_hub client (HfApi.model_info with files_metadata=True: one
request that resolves the revision to a commit and lists every file with size, git blob id and LFS sha256).
Everything is read at call time from the environment, so HF_ENDPOINT / HF_TOKEN / HF_HUB_OFFLINE set after
import still count (huggingface_hub itself reads them once, at import).

ModelScope goes through its own SDK (optional extra `modelscope`): modelscope_hub.HubApi when present
(modelscope >= 1.3x ships it), else the older modelscope.hub.api.HubApi. Neither is imported unless used.

Every failure becomes one AngelError line: unknown repo / revision / gated -> UsageError (2); hub unreachable or
offline -> ResourceError (4), raised within the metadata timeout (HF_HUB_ETAG_TIMEOUT, default 10 s).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from angelcli.errors import ResourceError, UsageError

DEFAULT_HF_ENDPOINT = "https://huggingface.co"
DEFAULT_MS_ENDPOINT = "https://www.modelscope.cn"
MS_INSTALL_HINT = "pip install 'angelcli[modelscope]' (or: pip install modelscope)"


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    sha256: str | None = None  # LFS / ModelScope sha256
    git_sha1: str | None = None  # git blob id of a non-LFS file (HF)

    @property
    def content_key(self) -> str:
        """Name of this content for resumable partial files: the same bytes resume under any revision."""
        digest = self.sha256 or self.git_sha1
        if digest:
            return digest
        import hashlib

        return f"size{self.size}-" + hashlib.sha256(self.path.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RemoteRepo:
    repo_id: str
    source: str  # "hf" | "modelscope"
    endpoint: str
    revision: str  # as requested (default branch name when none was given)
    commit: str  # resolved commit hash (ModelScope: the revision when no commit id is exposed)
    files: tuple[RemoteFile, ...]

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)


def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) set now, or set when huggingface_hub was imported."""
    if _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("TRANSFORMERS_OFFLINE")):
        return True
    import sys

    constants = sys.modules.get("huggingface_hub.constants")
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def hf_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_HF_ENDPOINT).rstrip("/")


def is_mirror(endpoint: str) -> bool:
    """True unless `endpoint` is huggingface.co itself (mirrors do not cover the Xet CAS endpoint)."""
    host = (urlsplit(endpoint).hostname or "").lower()
    return host not in {"huggingface.co", "www.huggingface.co", "hf.co"}


def disable_xet_for_mirror(endpoint: str) -> bool:
    """With a mirror endpoint, force plain HTTP for every huggingface_hub download in this process.

    Xet fetches its CAS endpoint from the hub and bypasses HF_ENDPOINT (spec cli-ux §2.8), so large files fail
    or leave the mirror. angel's own transfer is always plain HTTP; this also covers later hf_hub_download
    calls (tokenizers, configs) by other commands. Returns whether it was needed.
    """
    if not is_mirror(endpoint):
        return False
    os.environ["HF_HUB_DISABLE_XET"] = "1"
    try:
        from huggingface_hub import constants

        constants.HF_HUB_DISABLE_XET = True
    except ImportError:  # pragma: no cover - huggingface_hub is a hard dependency
        pass
    return True


def hf_token() -> str | None:
    """HF_TOKEN now, else huggingface_hub's stored token (None: anonymous)."""
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None


def metadata_timeout() -> float:
    try:
        return float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or 10)
    except ValueError:
        return 10.0


def _network_error(endpoint: str, err: BaseException) -> ResourceError:
    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    return ResourceError(
        f"cannot reach {endpoint} ({reason}); check the network, set HF_ENDPOINT to a mirror "
        f"(e.g. https://hf-mirror.com) or use --source modelscope; nothing was lost, rerun to resume"
    )


def _hf_call(fn, endpoint: str, repo_id: str, revision: str | None):
    """Run one HfApi call, turning its errors into one-line AngelErrors."""
    import httpx
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return fn()
    except GatedRepoError:
        raise UsageError(f"{repo_id} is gated: accept its terms on {endpoint}/{repo_id} and set HF_TOKEN") from None
    except RevisionNotFoundError:
        raise UsageError(f"{repo_id}: revision '{revision}' not found on {endpoint}") from None
    except RepositoryNotFoundError:
        raise UsageError(f"{repo_id}: repository not found on {endpoint} (check the name; private repos need "
                         f"HF_TOKEN)") from None
    except OfflineModeIsEnabled:
        raise ResourceError(f"HF_HUB_OFFLINE is set: cannot ask {endpoint} about {repo_id}") from None
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        if status == 401:
            raise UsageError(f"{endpoint} rejected the token for {repo_id} (HTTP 401): check HF_TOKEN") from None
        raise _network_error(endpoint, err) from None
    except (httpx.HTTPError, OSError) as err:
        raise _network_error(endpoint, err) from None


def list_hf(repo_id: str, revision: str | None = None, *, endpoint: str | None = None) -> RemoteRepo:
    """Resolve `revision` (default: main) of `repo_id` to a commit and list its files, via HfApi.model_info.

    If the endpoint (a mirror) leaves sizes out of model_info, the file tree of the resolved commit is listed
    instead (HfApi.list_repo_tree), which carries sizes and LFS sha256 too.
    """
    from huggingface_hub import HfApi

    endpoint = (endpoint or hf_endpoint()).rstrip("/")
    if offline():
        raise ResourceError(f"HF_HUB_OFFLINE is set: cannot ask {endpoint} about {repo_id}")
    api = HfApi(endpoint=endpoint, token=hf_token())
    info = _hf_call(lambda: api.model_info(repo_id, revision=revision, files_metadata=True, timeout=metadata_timeout()),
                    endpoint, repo_id, revision)
    if not info.sha:
        raise ResourceError(f"{endpoint} returned no commit for {repo_id}@{revision or 'main'}")
    siblings = [(s.rfilename, s.size, s.lfs, s.blob_id) for s in info.siblings or []]
    if any(size is None for _, size, _, _ in siblings):
        tree = _hf_call(lambda: list(api.list_repo_tree(repo_id, revision=info.sha, recursive=True)),
                        endpoint, repo_id, revision)
        siblings = [(f.path, f.size, f.lfs, f.blob_id) for f in tree if hasattr(f, "size")]
    files = tuple(RemoteFile(path=path, size=int(size), sha256=(lfs.sha256 if lfs else None),
                             git_sha1=(None if lfs else blob_id)) for path, size, lfs, blob_id in siblings)
    return RemoteRepo(repo_id, "hf", endpoint, revision or "main", info.sha, files)


def hf_file_url(repo_id: str, commit: str, path: str, endpoint: str) -> str:
    from huggingface_hub import hf_hub_url

    return hf_hub_url(repo_id, path, revision=commit, endpoint=endpoint)


def hf_headers() -> dict[str, str]:
    from huggingface_hub.utils import build_hf_headers

    from angelcli import __version__

    return build_hf_headers(token=hf_token(), library_name="angel", library_version=__version__)


# ---------------------------------------------------------------- ModelScope


def ms_endpoint() -> str:
    return (os.environ.get("MODELSCOPE_ENDPOINT") or DEFAULT_MS_ENDPOINT).rstrip("/")


def modelscope_api() -> tuple[str, Any]:
    """('hub', modelscope_hub.HubApi instance) or ('legacy', modelscope.hub.api.HubApi instance)."""
    token = os.environ.get("MODELSCOPE_API_TOKEN") or None
    try:
        from modelscope_hub import HubApi  # type: ignore[import-not-found]

        return "hub", HubApi(endpoint=os.environ.get("MODELSCOPE_ENDPOINT") or None, token=token)
    except ImportError:
        pass
    try:
        from modelscope.hub.api import HubApi as LegacyHubApi  # type: ignore[import-not-found]
    except ImportError:
        raise UsageError(f"--source modelscope needs the ModelScope SDK, which is not installed: {MS_INSTALL_HINT}") \
            from None
    return "legacy", LegacyHubApi()


def modelscope_available() -> bool:
    import importlib.util

    return any(importlib.util.find_spec(m) is not None for m in ("modelscope_hub", "modelscope"))


def _ms_commit(flavour: str, api: Any, repo_id: str, revision: str) -> str:
    """Commit id of a ModelScope branch/tag when the SDK exposes one, else the revision name itself."""
    try:
        revs = api.list_repo_revisions(repo_id, "model") if flavour == "hub" else []
    except Exception:  # noqa: BLE001 - best effort: the listing below still pins what it downloads
        return revision
    for entry in revs or []:
        if not isinstance(entry, dict):
            continue
        if revision in (entry.get("Revision"), entry.get("name"), entry.get("Name")):
            for key in ("CommitId", "commit_id", "Commit", "commit", "Sha", "sha"):
                if isinstance(entry.get(key), str) and entry[key]:
                    return entry[key]
    return revision


def list_modelscope(repo_id: str, revision: str | None = None) -> RemoteRepo:
    """List a ModelScope repo (default revision: master) with sizes and sha256."""
    revision = revision or "master"
    flavour, api = modelscope_api()
    try:
        if flavour == "hub":
            raw = [{"Path": f.path, "Size": f.size, "Sha256": f.sha256, "Type": f.type}
                   for f in api.list_repo_files(repo_id, "model", revision=revision, recursive=True)]
        else:
            raw = api.get_model_files(repo_id, revision=revision, recursive=True)
    except Exception as err:  # noqa: BLE001 - the SDK raises its own hierarchy; one line for the user
        text = str(err).splitlines()[0] if str(err) else type(err).__name__
        if "not exist" in text.lower() or "not found" in text.lower() or "404" in text:
            raise UsageError(f"{repo_id}@{revision}: not found on ModelScope ({text})") from None
        raise ResourceError(f"ModelScope listing of {repo_id} failed ({text}); check the network or use --source hf") \
            from None
    files = tuple(
        RemoteFile(path=str(f["Path"]), size=int(f.get("Size") or 0), sha256=f.get("Sha256") or None)
        for f in raw if str(f.get("Type", "blob")).lower() not in ("tree", "dir", "directory")
    )
    return RemoteRepo(repo_id, "modelscope", ms_endpoint(), revision, _ms_commit(flavour, api, repo_id, revision),
                      files)


def modelscope_download(repo_id: str, revision: str, rf: RemoteFile, staging_dir: str) -> str:
    """Download one file with the ModelScope SDK into `staging_dir`; returns the local path it wrote."""
    flavour, api = modelscope_api()
    if flavour == "hub":
        return str(api.download_file(repo_id, "model", rf.path, revision=revision, local_dir=staging_dir,
                                     expected_sha256=rf.sha256, file_size=rf.size))
    from modelscope.hub.file_download import model_file_download  # type: ignore[import-not-found]

    return str(model_file_download(repo_id, rf.path, revision=revision, local_dir=staging_dir))


def probe_latency(url: str, timeout: float = 3.0) -> float | None:
    """Seconds for one HEAD request to `url`, or None when it fails (used by --source auto)."""
    import time

    import httpx

    start = time.monotonic()
    try:
        httpx.head(url, timeout=timeout, follow_redirects=False)
    except httpx.HTTPError:
        return None
    return time.monotonic() - start


def repo_url(endpoint: str, repo_id: str) -> str:
    return f"{endpoint}/{quote(repo_id)}"
