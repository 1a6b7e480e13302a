"""Synthesis quality: Frechet distance / FID (overall, per group), feature extractor, Chamfer distance, MMD / COV."""

import math

import numpy as np
import pytest
import torch

from fairmonai.metrics import (
    DOMAIN_FID_NAME,
    FeatureExtractor,
    UndefinedMetricWarning,
    chamfer_distance,
    fid,
    fid_per_group,
    frechet_distance,
    mmd_cov,
    mmd_cov_from_distances,
    pairwise_chamfer,
)


def _direct_frechet(x, y):
    """Independent computation: Tr((S1 S2)^1/2) = sum sqrt(eig(S1^1/2 S2 S1^1/2)), symmetric eigen-decompositions."""
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root1 @ s2 @ root1)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(inner, 0, None)).sum())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fid_agrees_with_a_direct_computation(seed):
    rng = np.random.default_rng(seed)
    real = rng.normal(size=(200, 16))
    fake = rng.normal(loc=0.3, scale=1.2, size=(150, 16)) @ rng.normal(size=(16, 16)) * 0.3
    assert fid(real, fake) == pytest.approx(_direct_frechet(real, fake), rel=1e-7, abs=1e-8)
    assert fid(torch.as_tensor(real), torch.as_tensor(fake)) == pytest.approx(fid(real, fake))


def test_fid_of_identical_sets_is_zero_and_1d_closed_form():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 8))
    assert fid(x, x.copy()) == pytest.approx(0.0, abs=1e-6)
    # 1-D Gaussians: (mu1 - mu2)^2 + (sd1 - sd2)^2
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx((1 - 3) ** 2 + (2 - 3) ** 2)


def test_fid_with_singular_covariance_stays_finite():
    rng = np.random.default_rng(1)
    # fewer samples than dimensions: rank-deficient covariances; sqrtm needs the usual eps / complex handling
    real, fake = rng.normal(size=(10, 32)), rng.normal(size=(12, 32))
    value = fid(real, fake)
    assert math.isfinite(value) and value > 0
    assert value == pytest.approx(_direct_frechet(real, fake), rel=1e-3)
    # a degenerate (all-equal) feature set
    assert math.isfinite(fid(np.ones((5, 4)), rng.normal(size=(5, 4))))


def test_fid_input_errors():
    with pytest.raises(ValueError, match="features_fake contains 1 NaN"):
        fid(np.zeros((3, 2)), np.array([[0.0, 1.0], [np.nan, 0.0], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="at least 2 samples"):
        fid(np.zeros((1, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="dimensions"):
        fid(np.zeros((3, 2)), np.zeros((3, 4)))


def test_fid_per_group_and_variance():
    rng = np.random.default_rng(2)
    real = rng.normal(size=(120, 4))
    g_real = ["a"] * 60 + ["b"] * 60
    fake = np.concatenate([rng.normal(size=(50, 4)), rng.normal(loc=1.0, size=(50, 4)), rng.normal(size=(1, 4))])
    g_fake = ["a"] * 50 + ["b"] * 50 + ["c"]
    with pytest.warns(UndefinedMetricWarning, match="sensitive_feature_0=c"):
        res = fid_per_group(real, g_real, fake, g_fake, name=DOMAIN_FID_NAME)
    fa, fb = fid(real[:60], fake[:50]), fid(real[60:], fake[50:100])
    assert res["by_group"][("a",)] == pytest.approx(fa)
    assert res["by_group"][("b",)] == pytest.approx(fb)
    assert math.isnan(res["by_group"][("c",)])
    assert res["counts"][("c",)] == {"real": 0, "fake": 1}
    assert res["overall"] == pytest.approx(fid(real, fake))
    # population variance of the two defined FIDs: ((fa - fb) / 2)^2
    assert res["variance"] == pytest.approx(((fa - fb) / 2) ** 2)
    assert res["name"] == "FID (domain features)"
    assert fb > fa  # the shifted group is farther


def test_feature_extractor_with_monai_resnet_and_local_weights(tmp_path):
    from monai.networks.nets import ResNet

    def net():
        return ResNet("basic", [1, 1, 1, 1], [4, 4, 8, 8], spatial_dims=2, n_input_channels=1, feed_forward=False)

    torch.manual_seed(0)
    trained = net()
    images = torch.rand(6, 1, 16, 16)
    path = tmp_path / "extractor.pt"
    torch.save(trained.state_dict(), path)
    extractor = FeatureExtractor(net(), path, batch_size=4)
    assert extractor.name == "FID (domain features)"
    trained.eval()
    with torch.no_grad():
        expected = trained(images).numpy()
    feats = extractor(images)
    assert feats.shape == (6, 8)
    np.testing.assert_allclose(feats, expected, rtol=1e-5, atol=1e-6)
    # a checkpoint dict {"model": state_dict} is accepted too
    torch.save({"model": trained.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    np.testing.assert_allclose(FeatureExtractor(net(), tmp_path / "ckpt.pt")(images), expected, rtol=1e-5, atol=1e-6)
    assert FeatureExtractor(net(), is_inception=True).name == "FID"
    res = extractor.fid(images, images)
    assert res["name"] == "FID (domain features)" and res["value"] == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(TypeError, match="pass the weights file as weights="):
        FeatureExtractor(str(path))
    with pytest.raises(ValueError, match="do not fit the given model"):
        FeatureExtractor(torch.nn.Linear(2, 2), path)
    with pytest.raises(FileNotFoundError, match="not found"):
        FeatureExtractor(net(), tmp_path / "missing.pt")


# ----------------------------------------------------------------------------- point clouds
def test_chamfer_distance_by_hand_on_3_point_clouds():
    a = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    b = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    # a -> b nearest squared distances: (0,0,0)->(0,0,1): 1; (1,0,0)->(1,0,0): 0; (0,2,0)->(0,3,0): 1 -> mean 2/3
    # b -> a: (0,0,1)->(0,0,0): 1; (1,0,0): 0; (0,3,0)->(0,2,0): 1 -> mean 2/3
    assert chamfer_distance(a, b).item() == pytest.approx(4 / 3)
    # unsquared: a->b 1, 0, 1 ; b->a 1, 0, 1 -> 2/3 + 2/3
    assert chamfer_distance(a, b, squared=False).item() == pytest.approx(4 / 3)
    c = torch.tensor([[0.0, 0.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    # a -> c: 0, (1,0,0)->(0,0,0): 1, (0,2,0)->(0,0,0): 4 -> 5/3 ; c -> a: 0, (3,0,0)->(1,0,0): 4, 0 -> 4/3
    assert chamfer_distance(a, c).item() == pytest.approx(3.0)
    assert chamfer_distance(a, c, squared=False).item() == pytest.approx((0 + 1 + 2) / 3 + (0 + 2 + 0) / 3)
    batched = chamfer_distance(torch.stack([a, a]), torch.stack([b, c]))
    assert batched.shape == (2,) and batched.tolist() == pytest.approx([4 / 3, 3.0])
    assert chamfer_distance(a, a).item() == 0.0
    assert chamfer_distance(a.numpy(), c.numpy()).item() == pytest.approx(3.0)  # numpy in
    with pytest.raises(ValueError, match="a contains NaN"):
        chamfer_distance(torch.tensor([[float("nan"), 0.0, 0.0]]), b)


def test_mmd_cov_by_hand():
    # distances (generated x reference)
    d = np.array(
        [
            [0.1, 0.9, 0.8],
            [0.2, 0.7, 0.9],
            [0.6, 0.3, 0.5],
        ]
    )
    res = mmd_cov_from_distances(d)
    # MMD: min over generated per reference column = 0.1, 0.3, 0.5 -> mean 0.3
    assert res["mmd"] == pytest.approx(0.3)
    # nearest reference per generated row = 0, 0, 1 -> references {0, 1} covered of 3
    assert res["cov"] == pytest.approx(2 / 3)
    assert res["mmd_smp"] == pytest.approx((0.1 + 0.2 + 0.3) / 3)


def test_mmd_cov_on_point_clouds_and_cosine():
    rng = np.random.default_rng(0)
    ref = torch.as_tensor(rng.normal(size=(5, 16, 3)), dtype=torch.float32)
    gen = ref[:3] + 0.01  # near copies of the first three references
    dist = pairwise_chamfer(gen, ref, batch_size=2)
    assert dist.shape == (3, 5)
    for i in range(3):
        for j in range(5):
            assert dist[i, j] == pytest.approx(chamfer_distance(gen[i], ref[j]).item(), rel=1e-5)
    res = mmd_cov(gen, ref, batch_size=2)
    assert res["cov"] == pytest.approx(3 / 5)  # each generated cloud covers its own reference
    assert res["mmd"] == pytest.approx(dist.min(axis=0).mean())
    # identical sets: MMD 0, full coverage
    same = mmd_cov(ref, ref)
    assert same["mmd"] == pytest.approx(0.0, abs=1e-7) and same["cov"] == 1.0
    # cosine distance on flattened samples (FairDiff's image evaluation)
    imgs = rng.random((4, 2, 3, 3)) + 0.1
    cos = mmd_cov(imgs, imgs, distance="cosine")
    assert cos["cov"] == 1.0 and cos["mmd"] == pytest.approx(0.0, abs=1e-12)
    flat = imgs.reshape(4, -1)
    unit = flat / np.linalg.norm(flat, axis=1, keepdims=True)
    expected = (1 - unit[:2] @ unit.T) / 2
    assert mmd_cov(imgs[:2], imgs, distance="cosine")["mmd"] == pytest.approx(expected.min(axis=0).mean())
    with pytest.raises(ValueError, match="distance must be"):
        mmd_cov(gen, ref, distance="emd")
