"""``var_jax.parity``: every output of the official code recorded in the fixture, recomputed by var-jax."""
import re

import jax
import numpy as np
import pytest

from var_jax import parity

# The fixture's greedy-sampling references (checked through var_jax.sample).
SAMPLE_CHECKS = {f"sample/idx/{k}" for k in range(6)} | {"sample/img"}
# Outputs the fixture holds besides the sampling and resize ones; each must be checked.
MODEL_CHECKS = ({"enc_f", "recon", "recon_from_idx", "var_input", "logits", "logits_uncond", "ce_loss",
                 "train/rec", "train/vq_loss"}
                | {f"idx/{k}" for k in range(6)} | {f"fhat/{k}" for k in range(6)})


@pytest.fixture(scope="module")
def checks(official):
    with jax.default_matmul_precision("highest"):
        return parity.run_checks(official)


def test_every_reference_is_checked(checks, official):
    names = [c.name for c in checks]
    assert len(names) == len(set(names))
    interp = {k for k in official.files if k.startswith("interp/") and k != "interp/x16"}
    assert set(names) == MODEL_CHECKS | SAMPLE_CHECKS | interp


def test_every_check_passes(checks):
    bad = [(c.name, c.error, c.status, c.note) for c in checks if c.status != "ok"]
    assert not bad


def test_float_tolerance_is_the_documented_one(checks):
    # Floats agree within 1e-4 absolute (fixture README); indices exactly.
    for c in checks:
        assert c.tol == (0.0 if c.name.startswith(("idx/", "sample/idx/")) else 1e-4), c.name


def test_index_checks_are_exact(checks):
    idx = [c for c in checks if c.name.startswith(("idx/", "sample/idx/"))]
    assert len(idx) == 12
    for c in idx:
        assert c.error == 0.0, c.name


def _report_lines(stdout: str) -> dict[str, str]:
    """{check name: status} from the printed report."""
    out = {}
    for line in stdout.splitlines()[1:-1]:
        m = re.match(r"^(\S+)\s+(\S+)\s+(\S+)\s+(ok|FAIL|missing)\b", line)
        assert m, f"unparsable report line {line!r}"
        out[m.group(1)] = m.group(4)
    return out


def test_command_line_report(checks, fixture_path, capsys):
    assert parity.main([str(fixture_path)]) == 0  # python -m var_jax.parity FIXTURE
    stdout = capsys.readouterr().out
    lines = stdout.strip().splitlines()
    assert lines[0].split() == ["check", "max_abs_err", "tol", "status"]
    assert _report_lines(stdout) == {c.name: "ok" for c in checks}
    assert re.fullmatch(rf"{len(checks)} ok, 0 FAIL, 0 missing \(of {len(checks)} checks; .*\)", lines[-1]), lines[-1]


def test_corrupted_fixture_fails(official, tmp_path, capsys):
    arrays = {k: official[k] for k in official.files}
    arrays["logits"] = arrays["logits"].copy()
    arrays["logits"][1, 5, 7] += 1e-2  # 100x the float tolerance
    del arrays["sample/img"]  # a reference the fixture lacks is reported as missing
    path = tmp_path / "corrupted.npz"
    np.savez(path, **arrays)
    assert parity.main([str(path)]) == 1
    out = capsys.readouterr().out
    printed = _report_lines(out)
    assert printed.pop("logits") == "FAIL"
    assert printed.pop("sample/img") == "missing"
    assert set(printed.values()) == {"ok"}
    assert re.search(r"\b1 FAIL, 1 missing\b", out.splitlines()[-1])


def test_unreadable_fixture(tmp_path, capsys):
    missing = tmp_path / "no_such_fixture.npz"
    assert parity.main([str(missing)]) == 2
    err = capsys.readouterr().err
    assert "cannot read fixture" in err and "no_such_fixture.npz" in err
