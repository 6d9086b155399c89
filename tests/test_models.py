"""Flax networks: shapes, LocalResNet equivariance and receptive field, labels, param counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresde.models import MLP, LocalResNet, UNet, count_params

KEY = jax.random.PRNGKey(0)


def _random_variables(net, *args, seed=0):
    """Random parameters with the shapes of net.init(*args), drawn in NumPy.

    Compiling `jax.jit(net.init)` of a U-Net costs tens of seconds on a loaded 2-core CPU
    (one threefry program per parameter); the shapes come from `eval_shape` for free.
    Kernels ~ N(0, 1/fan_in), norm scales 1 + N(0, 0.1^2), other leaves N(0, 0.1^2).
    """
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(net.init, KEY, *args)

    def draw(path, s):
        name = str(path[-1])
        if "kernel" in name or "embedding" in name:
            fan_in = int(np.prod(s.shape[:-1])) if "kernel" in name else 1
            return jnp.asarray(rng.normal(0, 1 / np.sqrt(fan_in), s.shape), s.dtype)
        base = 1.0 if "scale" in name else 0.0
        return jnp.asarray(base + rng.normal(0, 0.1, s.shape), s.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def test_mlp_shapes_labels_dropout():
    net = MLP(width=32, depth=2, num_classes=3, dropout=0.5, class_dropout=0.5)
    x, t = jax.random.normal(KEY, (5, 3)), jnp.linspace(0.1, 1.0, 5)
    v = jax.jit(net.init)(KEY, x, t)
    f = jax.jit(net.apply, static_argnames="train")
    out0 = f(v, x, t)
    assert out0.shape == x.shape and out0.dtype == x.dtype
    assert not np.allclose(out0, f(v, x, t, jnp.array([0, 1, 2, 0, 1])))  # labels enter the network
    np.testing.assert_allclose(out0, f(v, x, t, jnp.full(5, 3)), rtol=1e-5, atol=1e-5)  # y=None == null id 3
    np.testing.assert_allclose(f(v, x, 0.5), f(v, x, jnp.full(5, 0.5)), rtol=1e-5, atol=1e-5)  # scalar t
    tr1 = f(v, x, t, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
    tr2 = f(v, x, t, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
    assert not np.allclose(tr1, tr2)                    # dropout is active in training only
    print("MLP(32, 2) params:", count_params(v))
    with pytest.raises(ValueError, match="num_classes"):
        jax.eval_shape(MLP(width=8, depth=1).init, KEY, x, t, jnp.zeros(5, jnp.int32))


@pytest.fixture(scope="module")
def local_resnet():
    net = LocalResNet(channels=8, n_layers=3, emb_dim=16, num_classes=10)
    x = jnp.zeros((1, 12, 12, 1))
    v = _random_variables(net, x, jnp.ones(1), seed=3)
    return net, v, jax.jit(lambda v, x, t, y: net.apply(v, x, t, y))


def test_local_resnet_translation_equivariance(local_resnet):
    net, v, f = local_resnet
    x = jax.random.normal(KEY, (2, 12, 12, 1))
    t, y = jnp.array([0.3, 0.7]), jnp.array([1, 4])
    out = f(v, x, t, y)
    assert out.shape == x.shape
    shifted = f(v, jnp.roll(x, (3, -5), axis=(1, 2)), t, y)
    np.testing.assert_allclose(shifted, jnp.roll(out, (3, -5), axis=(1, 2)), atol=1e-5)
    assert not np.allclose(out, f(v, x, t, jnp.array([2, 5])), atol=1e-4)  # labels matter


@pytest.mark.parametrize("padding", ["circular", "zeros"])
def test_local_resnet_receptive_field(padding):
    n = 3
    net = LocalResNet(channels=8, n_layers=n, emb_dim=16, padding=padding)
    assert net.receptive_field == 2 * n + 1 == 7
    x = jax.random.normal(KEY, (1, 16, 16, 2))
    v = _random_variables(net, x, jnp.ones(1), seed=4)
    f = jax.jit(lambda x: net.apply(v, x, jnp.full((1,), 0.5)))
    i, j = 8, 7
    diff = np.abs(np.asarray(f(x.at[0, i, j, 0].add(1.0)) - f(x)))[0].max(-1)
    changed = np.argwhere(diff > 1e-6)
    half = net.receptive_field // 2
    # every changed pixel is within the (2n+1)-patch; the patch's corners do change
    assert np.all(np.abs(changed - [i, j]).max(1) <= half)
    assert diff[i - half, j - half] > 1e-6 and diff[i + half, j + half] > 1e-6


@pytest.mark.parametrize("size,channels,ch_mult,attn,embedding", [
    (8, 1, (1, 2), (4,), "sinusoidal"),      # digits
    (28, 1, (1, 2), (14,), "fourier"),       # mnist
    (32, 3, (1, 2, 2), (8,), "sinusoidal"),  # cifar10
])
def test_unet_shapes_and_labels(size, channels, ch_mult, attn, embedding):
    net = UNet(ch=8, ch_mult=ch_mult, num_res_blocks=1, attn_resolutions=attn, embedding=embedding,
               num_classes=10, dropout=0.1)
    x = jax.random.normal(KEY, (2, size, size, channels))
    t = jnp.array([0.2, 0.9])
    v = _random_variables(net, x, t, seed=5)
    f = jax.jit(lambda v, x, t, y: net.apply(v, x, t, y))  # one compilation: y always an array
    out = f(v, x, t, jnp.array([10, 10]))  # the null label (what y=None means, see the MLP test)
    assert out.shape == x.shape and out.dtype == x.dtype and bool(jnp.all(jnp.isfinite(out)))
    assert not np.allclose(out, f(v, x, t, jnp.array([3, 7])), atol=1e-4)
    assert not np.allclose(out, f(v, x, jnp.array([0.5, 0.5]), jnp.array([10, 10])), atol=1e-4)
    has_attn = any("AttnBlock" in k for k in v["params"])
    assert has_attn
    print(f"UNet(ch=8, {ch_mult}) on {size}x{size}x{channels}: {count_params(v):,} params")


def test_unet_rejects_bad_size():
    net = UNet(ch=8, ch_mult=(1, 2, 2, 2), num_res_blocks=1)
    with pytest.raises(ValueError, match="must be divisible by 2\\^\\(len\\(ch_mult\\)-1\\) = 8"):  # 28 is not; raised while tracing
        jax.eval_shape(net.init, KEY, jnp.zeros((1, 28, 28, 1)), jnp.ones(1))


def test_networks_plug_into_parameterization():
    from scoresde.parameterization import EpsPrediction, score_fn_from_network
    from scoresde.sde import VPSDE

    sde = VPSDE()
    net = LocalResNet(channels=4, n_layers=2, emb_dim=8)
    x = jax.random.normal(KEY, (3, 8, 8, 1))
    v = _random_variables(net, x, jnp.ones(3))
    score = jax.jit(score_fn_from_network(lambda x, t: net.apply(v, x, t), sde, EpsPrediction()))
    t = 0.5
    sigma = sde.sigma(jnp.asarray(t))
    eps = jax.jit(net.apply)(v, x, jnp.full(3, t))
    np.testing.assert_allclose(score(x, t), -eps / sigma, rtol=1e-5, atol=1e-6)
