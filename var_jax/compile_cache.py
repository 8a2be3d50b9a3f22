"""The persistent compilation cache: a second run of the same program on the same machine and JAX
version loads the compiled program from disk instead of compiling it again.

The directory is ``$VAR_JAX_CACHE_DIR`` if set (``off`` switches the cache off), else JAX's own
setting (``$JAX_COMPILATION_CACHE_DIR``) if there is one, else ``$XDG_CACHE_HOME/var-jax/jax``
(``~/.cache/var-jax/jax``).  Every program is kept, however fast it
compiled, so the sampler of a small model is cached too.
"""
from __future__ import annotations

import os
import pathlib
import warnings

import jax

ENV = "VAR_JAX_CACHE_DIR"


def default_dir() -> pathlib.Path:
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "var-jax" / "jax"


def enable(directory: str | os.PathLike | None = None) -> pathlib.Path | None:
    """Turn the cache on in ``directory`` (default: as the module says) → the directory, or None when
    it is ``off``.  Call it before the first compilation of the process."""
    chosen = directory if directory is not None else os.environ.get(ENV) or jax.config.jax_compilation_cache_dir
    if str(chosen).lower() == "off":
        return None
    path = pathlib.Path(chosen or default_dir()).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        message = (f"cannot create the compilation cache directory {path} ({e}); set {ENV} to a writable "
                   f"directory, or to 'off'")
        if chosen:
            raise ValueError(message) from e
        warnings.warn(message + "; going on without the cache")  # the default place: not the user's choice
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return path
