"""The Colab notebook (launch/colab_sampling.ipynb), executed cell by cell in its CPU smoke mode: a
tiny random model, nothing installed or downloaded.  The cells are exec'd from the notebook's JSON,
so no Jupyter packages are needed."""
from __future__ import annotations

import json
import pathlib

import matplotlib
import numpy as np
import pytest

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / "launch" / "colab_sampling.ipynb"


def code_cells() -> list[str]:
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def test_notebook_cells_are_plain_python():
    cells = code_cells()
    assert len(cells) >= 4
    for source in cells:
        # shell escapes and magics would not run outside Jupyter (and the install uses pip from Python)
        assert not [line for line in source.splitlines() if line.lstrip().startswith(("!", "%"))], source
        compile(source, str(NOTEBOOK), "exec")


@pytest.mark.slow
def test_notebook_runs_in_smoke_mode(monkeypatch, tmp_path):
    monkeypatch.setenv("VAR_JAX_NOTEBOOK_SMOKE", "1")
    monkeypatch.chdir(tmp_path)  # anything the notebook writes lands here
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    monkeypatch.setattr(plt, "show", lambda *a, **k: None)
    ns: dict = {"__name__": "__notebook__"}
    for source in code_cells():
        exec(compile(source, str(NOTEBOOK), "exec"), ns)
    plt.close("all")

    per_class, classes = ns["PER_CLASS"], ns["CLASSES"]
    size = ns["vae"].cfg.image_size()
    assert ns["images"].shape == (len(classes) * per_class, size, size, 3) and ns["images"].dtype == np.uint8
    assert ns["grid"].ndim == 3 and ns["grid"].shape[0] > len(classes) * size  # all rows drawn
    np.testing.assert_array_equal(np.asarray(ns["result"].labels), np.repeat(classes, per_class))

    # In-painting kept the image's own last-scale tokens outside the box and only there may differ.
    inpainted, keep = ns["inpainted"], ns["keep"].reshape(-1) > 0.5
    assert np.asarray(inpainted.images).shape == (1, size, size, 3)
    own = np.asarray(ns["vae"].img_to_idx(ns["source"])[-1])[0]
    np.testing.assert_array_equal(np.asarray(inpainted.tokens[-1])[0][keep], own[keep])
    assert 0 < keep.sum() < keep.size
    assert not list(tmp_path.iterdir())  # smoke mode downloads and writes nothing
