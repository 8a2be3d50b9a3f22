"""Resumable training checkpoints with Orbax: one numbered directory per saved step, written in the
background and made visible only when complete (a crash mid-save leaves the previous one usable).

Each checkpoint holds ``state`` (any pytree of arrays: parameters, optimizer states, statistics,
the step), ``data`` (the input iterator's state, JSON) and ``config`` (the run's configuration, JSON).
The state is stored as a flat {path: array} dict, and restored into an abstract target built by the
caller with the *current* shardings, so a checkpoint written on N devices loads on M.
"""
from __future__ import annotations

import os
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp

from var_jax.models.state import path_str


def flatten(tree) -> tuple[dict[str, Any], Any]:
    """({"a/b/0": leaf, ...}, treedef) for any pytree."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    flat = {path_str(path): leaf for path, leaf in leaves}
    if len(flat) != len(leaves):
        raise ValueError("two leaves of the training state have the same path name; rename one")
    return flat, treedef


def abstract_like(tree):
    """Shapes, dtypes and shardings of a pytree of arrays: the target to restore a checkpoint into."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)


def local_workdir(workdir: str | os.PathLike) -> pathlib.Path:
    """``workdir`` as an absolute path; a URL (``gs://...``) is refused: logs, images and exported
    models are written with ordinary file I/O, so a bucket must be mounted (gcsfuse, or a shared
    filesystem such as Filestore/NFS) and its mount point given."""
    text = os.fspath(workdir)
    if "://" in text:
        raise ValueError(f"--workdir {text} is a URL; give a directory instead: mount the bucket on every host "
                         f"(e.g. `gcsfuse --implicit-dirs BUCKET /gcs/BUCKET`) and pass /gcs/BUCKET/...")
    return pathlib.Path(text).absolute()


class Checkpointer:
    """``save(step, state, data_state, config)`` / ``restore(abstract_state)`` in ``directory``,
    keeping the newest ``keep`` checkpoints."""

    def __init__(self, directory: str | os.PathLike, *, keep: int = 3, async_save: bool = True):
        if keep < 1:
            raise ValueError(f"keep must be at least 1 (the newest checkpoint), got {keep}")
        self.directory = local_workdir(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_names=("state", "data", "config"))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state, *, data_state: dict | None, config: dict) -> None:
        flat, _ = flatten(state)
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(flat),
            data=ocp.args.JsonSave(data_state or {}),
            config=ocp.args.JsonSave(config)), force=True)

    def restore(self, abstract_state, step: int | None = None) -> tuple[Any, dict, dict]:
        """(state shaped like ``abstract_state``, data_state, config) of ``step`` (default: the newest)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        target, treedef = flatten(abstract_state)
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore(),
                config=ocp.args.JsonRestore()))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"the checkpoint of step {step} in {self.directory} does not fit the current model "
                             f"and optimizer: {e}") from e
        flat = restored.state
        wrong = [f"{k} {tuple(v.shape)} (now {tuple(target[k].shape)})" for k, v in flat.items()
                 if tuple(v.shape) != tuple(target[k].shape)]
        if wrong:
            raise ValueError(f"the checkpoint of step {step} in {self.directory} does not fit the current model: "
                             f"{len(wrong)} array(s) differ in shape: {'; '.join(wrong[:5])}")
        state = jax.tree_util.tree_unflatten(treedef, [flat[k] for k in target])
        return state, dict(restored.data), dict(restored.config)

    def saved_config(self, step: int | None = None) -> dict | None:
        """The configuration stored with ``step`` (default: the newest), or None when there is no
        checkpoint; reads nothing else, so a run can be checked before any array is allocated."""
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        restored = self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        return dict(restored.config)

    def wait(self) -> None:
        """Block until the background save (if any) is on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()
