"""Flax networks: shapes, LocalResNet equivariance and receptive field, labels, param counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scoresde.models import MLP, LocalResNet, count_params

KEY = jax.random.PRNGKey(0)


def _perturb(variables, key, scale=0.1):
    """Random nonzero parameters everywhere (so no layer is trivially zero)."""
    leaves, tree = jax.tree_util.tree_flatten(variables)
    keys = jax.random.split(key, len(leaves))
    return jax.tree_util.tree_unflatten(
        tree, [x + scale * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)])


def test_mlp_shapes_labels_dropout():
    net = MLP(width=32, depth=2, num_classes=3, dropout=0.5, class_dropout=0.5)
    x, t = jax.random.normal(KEY, (5, 3)), jnp.linspace(0.1, 1.0, 5)
    v = net.init(KEY, x, t)
    out0 = net.apply(v, x, t)
    assert out0.shape == x.shape and out0.dtype == x.dtype
    out_y = net.apply(v, x, t, jnp.array([0, 1, 2, 0, 1]))
    assert not np.allclose(out0, out_y)                 # labels enter the network
    np.testing.assert_allclose(out0, net.apply(v, x, t, jnp.full(5, 3)), atol=1e-6)  # y=None == null id
    np.testing.assert_allclose(net.apply(v, x, 0.5), net.apply(v, x, jnp.full(5, 0.5)), atol=1e-6)
    tr1 = net.apply(v, x, t, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
    tr2 = net.apply(v, x, t, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
    assert not np.allclose(tr1, tr2)                    # dropout is active in training only
    print("MLP(32, 2) params:", count_params(v))
    with pytest.raises(ValueError, match="num_classes"):
        MLP(width=8, depth=1).init(KEY, x, t, jnp.zeros(5, jnp.int32))


@pytest.fixture(scope="module")
def local_resnet():
    net = LocalResNet(channels=8, n_layers=3, emb_dim=16, num_classes=10)
    x = jnp.zeros((1, 12, 12, 1))
    v = _perturb(net.init(KEY, x, jnp.ones(1)), jax.random.PRNGKey(3))
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
    v = _perturb(net.init(KEY, x, jnp.ones(1)), jax.random.PRNGKey(4))
    f = jax.jit(lambda x: net.apply(v, x, jnp.full((1,), 0.5)))
    i, j = 8, 7
    diff = np.abs(np.asarray(f(x.at[0, i, j, 0].add(1.0)) - f(x)))[0].max(-1)
    changed = np.argwhere(diff > 1e-6)
    half = net.receptive_field // 2
    # every changed pixel is within the (2n+1)-patch; the patch's corners do change
    assert np.all(np.abs(changed - [i, j]).max(1) <= half)
    assert diff[i - half, j - half] > 1e-6 and diff[i + half, j + half] > 1e-6
