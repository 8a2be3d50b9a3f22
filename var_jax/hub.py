"""The released VAR models from the Hugging Face Hub, ready to sample, without torch.

``from_pretrained("var_d16")`` downloads the tokenizer and VAR ``.pth`` files with ``huggingface_hub``
(its cache, ``HF_HOME``, ``HF_HUB_OFFLINE`` and tokens apply), converts them once into a var-jax model
directory under :func:`cache_root`, and loads that directory, so later calls take seconds.  The
directory is named after the downloaded files' content (the Hub cache keeps each file under its hash),
so a new revision of a file is converted again and an old conversion is never reused for it.
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import sys

from var_jax.checkpoint import CONFIG_FILE, Pretrained, load_pretrained, save_pretrained

REPO_ID = "FoundationVision/var"
TOKENIZER_FILE = "vae_ch160v4096z32.pth"
# The released VARs: d16-d30 at 256 px; d36 at 512 px with shared AdaLN.
RELEASED = {f"var_d{d}": f"var_d{d}.pth" for d in (16, 20, 24, 30, 36)}


def cache_root() -> pathlib.Path:
    """Where converted models are kept: ``$VAR_JAX_CACHE``, else ``$XDG_CACHE_HOME/var-jax``, else
    ``~/.cache/var-jax``."""
    if os.environ.get("VAR_JAX_CACHE"):
        return pathlib.Path(os.environ["VAR_JAX_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base).expanduser() / "var-jax"


def _files(name: str, repo_id: str | None, vae_file: str | None, var_file: str | None) -> tuple[str, str, str]:
    if name in RELEASED:
        return repo_id or REPO_ID, vae_file or TOKENIZER_FILE, var_file or RELEASED[name]
    if "/" in name:  # another Hub repository (a fine-tune, a mirror): say which files
        if repo_id is not None:
            raise ValueError(f"give the repository once: as the name ({name!r}) or as repo_id ({repo_id!r})")
        if not var_file:
            raise ValueError(f"{name} is not a released model: give var_file= (and vae_file= unless its tokenizer "
                             f"is {TOKENIZER_FILE}), the .pth files in that repository")
        return name, vae_file or TOKENIZER_FILE, var_file
    raise ValueError(f"unknown model {name!r}: use one of {', '.join(RELEASED)}, or a Hub repository id "
                     f"('owner/name') with var_file= and vae_file=")


def download(repo_id: str, filename: str, *, revision: str | None = None, token: str | bool | None = None) -> str:
    """One file of a Hub repository → its path in the Hub cache (downloaded if not there yet)."""
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError
    try:
        return huggingface_hub.hf_hub_download(repo_id, filename, revision=revision, token=token)
    except LocalEntryNotFoundError as e:
        raise FileNotFoundError(f"{filename} of {repo_id} is not in the Hugging Face cache and cannot be downloaded "
                                f"now (offline: HF_HUB_OFFLINE=1, or no network); download it once with network "
                                f"access: {e}") from e
    except EntryNotFoundError as e:
        raise FileNotFoundError(f"{repo_id} has no file {filename}") from e
    except RepositoryNotFoundError as e:
        raise FileNotFoundError(f"no Hub repository {repo_id} (or it is private: log in with `hf auth login` or "
                                f"give token=)") from e


def converted_dir(vae_path: str, var_path: str, repo_id: str, var_file: str, root: pathlib.Path) -> pathlib.Path:
    """The cache directory of one pair of downloaded files, named after their content."""
    key = hashlib.sha256("\n".join(os.path.realpath(p) for p in (vae_path, var_path)).encode()).hexdigest()[:16]
    return root / repo_id.replace("/", "--") / f"{pathlib.Path(var_file).stem}-{key}"


def from_pretrained(name: str = "var_d16", *, repo_id: str | None = None, vae_file: str | None = None,
                    var_file: str | None = None, revision: str | None = None, token: str | bool | None = None,
                    cache_dir: str | os.PathLike | None = None, dtype: str | None = None) -> Pretrained:
    """A released model (``var_d16``, ``var_d20``, ``var_d24``, ``var_d30``, ``var_d36``) or the ``.pth``
    files of another Hub repository (``from_pretrained("owner/name", var_file=..., vae_file=...)``), as
    (vae, var, config) ready for :class:`var_jax.sample.Sampler`.  ``dtype`` sets the compute dtype
    (e.g. ``bfloat16``); ``cache_dir`` overrides where converted models are kept."""
    repo_id, vae_file, var_file = _files(name, repo_id, vae_file, var_file)
    root = pathlib.Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    vae_path = download(repo_id, vae_file, revision=revision, token=token)
    var_path = download(repo_id, var_file, revision=revision, token=token)
    target = converted_dir(vae_path, var_path, repo_id, var_file, root)
    if not (target / CONFIG_FILE).is_file():
        from var_jax import convert
        print(f"converting {repo_id}/{var_file} and {vae_file} once into {target}", file=sys.stderr)
        vae, var = convert.models_from_official(convert.read_pth(vae_path, "vae_local"),
                                                convert.read_pth(var_path, "var_wo_ddp"))
        try:
            source = {"repo_id": repo_id, "files": [vae_file, var_file]}
            save_pretrained(target, vae=vae, var=var, extra={"source": source})
        except FileExistsError:  # another process converted it meanwhile
            if not (target / CONFIG_FILE).is_file():
                raise
    return load_pretrained(target, dtype=dtype)
