"""SDE schedules against their defining ODEs and a forward Euler-Maruyama simulation."""

import diffrax
import jax
import lineax as lx
import jax.numpy as jnp
import numpy as np
import pytest
from jax import enable_x64

from scoresde import CosineVPSDE, SubVPSDE, VESDE, VPSDE

SDES = {
    "vp": lambda: VPSDE(),
    "cosine": lambda: CosineVPSDE(),
    "subvp": lambda: SubVPSDE(),
    "ve": lambda: VESDE(sigma_min=0.01, sigma_max=50.0),
}


@pytest.mark.parametrize("name", list(SDES))
def test_alpha_sigma_solve_moment_odes(name):
    """d m/dt = f m and d v/dt = 2 f v + g^2 from (alpha(0), sigma(0)^2): m = alpha, v = sigma^2.

    Solved with Dopri8 at rtol 1e-11 in float64; the closed forms must agree to 1e-5
    (relative for sigma, whose VE value reaches 50).
    """
    with enable_x64():
        sde = SDES[name]()
        ts = jnp.array([sde.eps, 0.01, 0.1, 0.3, 0.5, 0.8, 0.95, sde.T], dtype=jnp.float64)

        def rhs(t, y, args):
            m, v = y
            return (sde.f(t) * m, 2 * sde.f(t) * v + sde.g2(t))

        t0 = jnp.float64(0.0)
        y0 = (sde.alpha(t0), sde.sigma(t0) ** 2)
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(rhs), diffrax.Dopri8(), t0, sde.T, dt0=1e-4, y0=y0,
            saveat=diffrax.SaveAt(ts=ts),
            stepsize_controller=diffrax.PIDController(rtol=1e-11, atol=1e-13), max_steps=100000)
        m, v = sol.ys
        np.testing.assert_allclose(m, sde.alpha(ts), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(np.sqrt(v), sde.sigma(ts), rtol=1e-5, atol=1e-7)
        # The log-SNR identity used by the importance sampler: g^2 / sigma^2 = -d lambda / dt.
        dlam = jax.vmap(jax.grad(sde.log_snr))(ts)
        np.testing.assert_allclose(sde.g2(ts) / sde.sigma(ts) ** 2, -dlam, rtol=1e-7)
        np.testing.assert_allclose(sde.t_from_log_snr(sde.log_snr(ts)), ts, rtol=1e-9)


@pytest.mark.parametrize("name", list(SDES))
def test_float32_schedule_is_accurate(name):
    """The float32 closed forms agree with their float64 values (no cancellation)."""
    sde = SDES[name]()
    ts = np.array([sde.eps, 2 * sde.eps, 0.01, 0.5, 0.99, sde.T], np.float32)
    with enable_x64():
        sde64 = SDES[name]()
        ref = {k: np.asarray(getattr(sde64, k)(jnp.asarray(ts, jnp.float64)))
               for k in ("alpha", "sigma", "log_snr", "g2")}
        t_back = np.asarray(sde64.t_from_log_snr(jnp.asarray(ref["log_snr"])))
    for k, r in ref.items():
        np.testing.assert_allclose(getattr(sde, k)(jnp.asarray(ts)), r, rtol=2e-6, atol=1e-6, err_msg=k)
    np.testing.assert_allclose(sde.t_from_log_snr(sde.log_snr(jnp.asarray(ts))), t_back, rtol=2e-6)


@pytest.mark.parametrize("name", list(SDES))
def test_euler_maruyama_reproduces_marginal(name):
    """A diffrax Euler-Maruyama simulation from a point mass has mean alpha x0 and std sigma.

    8000 paths, 400 steps uniform in log-SNR (so that the cosine schedule's stiff end,
    beta(T) ~ 1e3, is resolved), checked at t = 0.5 and t = T; tolerance 4 Monte Carlo
    standard errors (the Euler bias, O(step), is far below that). sigma(0) = 0 for every
    SDE here, so x(0) = x0 is the point mass itself.
    """
    sde = SDES[name]()
    n, x0 = 8000, 1.5
    key = jax.random.PRNGKey(0)
    lam = jnp.linspace(sde.log_snr(sde.eps), sde.log_snr(sde.T), 400)
    grid = jnp.concatenate([jnp.zeros(1), jnp.sort(jnp.append(sde.t_from_log_snr(lam), 0.5))])
    grid = grid.at[-1].set(sde.T)
    drift = diffrax.ODETerm(lambda t, y, args: sde.f(t) * y)
    bm = diffrax.UnsafeBrownianPath(shape=(n,), key=key)
    diff = diffrax.ControlTerm(
        lambda t, y, args: lx.DiagonalLinearOperator(jnp.sqrt(sde.g2(t)) * jnp.ones_like(y)), bm)
    terms = diffrax.MultiTerm(drift, diff)
    ts = jnp.array([0.5, sde.T])
    sol = diffrax.diffeqsolve(terms, diffrax.Euler(), 0.0, sde.T, dt0=None,
                              y0=jnp.full((n,), x0, jnp.float32), saveat=diffrax.SaveAt(ts=ts),
                              stepsize_controller=diffrax.StepTo(ts=grid),
                              max_steps=1000, adjoint=diffrax.ForwardMode())
    for i, t in enumerate(np.asarray(ts)):
        xs = np.asarray(sol.ys[i])
        mean, std = float(sde.alpha(t)) * x0, float(sde.sigma(t))
        se_mean = std / np.sqrt(n)
        se_std = std / np.sqrt(2 * n)
        assert abs(xs.mean() - mean) < 4 * se_mean + 1e-6, (t, xs.mean(), mean)
        assert abs(xs.std() - std) < 4 * se_std + 2e-3 * std, (t, xs.std(), std)


@pytest.mark.parametrize("name", list(SDES))
def test_discretize_is_exact_transition(name):
    """discretize(x, t, dt) composes to the marginal: one-step mean/variance match transition."""
    sde = SDES[name]()
    s, t = 0.3, 0.45
    x = jnp.array([[2.0, -1.0]])
    F, G = sde.discretize(x, t, t - s)
    a, v = sde.transition(s, t)
    np.testing.assert_allclose(x + F, a * x, rtol=1e-6)
    np.testing.assert_allclose(G ** 2, v, rtol=1e-5)
    # Chapman-Kolmogorov: alpha_t^2 v_s-part + transition variance = sigma_t^2.
    np.testing.assert_allclose(a**2 * sde.sigma(s) ** 2 + v, sde.sigma(t) ** 2, rtol=1e-5)


def test_sdes_are_pytrees_through_jit_vmap_pmap():
    f = jax.jit(lambda sde, t: sde.sigma(t))
    for name, make in SDES.items():
        sde = make()
        np.testing.assert_allclose(f(sde, 0.5), sde.sigma(0.5), rtol=1e-6)
    sdes = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), VPSDE(beta_max=10.0), VPSDE(beta_max=20.0))
    out = jax.vmap(lambda sde: sde.sigma(0.5))(sdes)
    np.testing.assert_allclose(out, [VPSDE(beta_max=10.0).sigma(0.5), VPSDE().sigma(0.5)], rtol=1e-6)
    n = jax.local_device_count()
    p = jax.pmap(lambda sde, t: sde.alpha(t), in_axes=(None, 0))(VPSDE(), jnp.linspace(0.1, 0.9, n))
    np.testing.assert_allclose(p, VPSDE().alpha(jnp.linspace(0.1, 0.9, n)), rtol=1e-6)


def test_prior_and_reverse_drifts():
    sde = VESDE()
    z = jnp.ones((3, 4)) * 2.0
    expected = -0.5 * 4 * np.log(2 * np.pi * 50.0**2) - 0.5 * 16 / 50.0**2
    np.testing.assert_allclose(sde.prior_logp(z), expected * np.ones(3), rtol=1e-6)
    vp = VPSDE()
    score = lambda x, t: -x  # N(0, I) is stationary for VP: PF-ODE drift f x - g^2/2 (-x) = 0
    x = jnp.ones((2, 3))
    np.testing.assert_allclose(vp.ode_drift(score, x, 0.4), 0.0, atol=1e-6)
    np.testing.assert_allclose(vp.reverse_drift(score, x, 0.4), 0.5 * vp.beta(0.4) * x, rtol=1e-6)


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="eps must be smaller than T"):
        VPSDE(eps=1.0, T=0.5)
    with pytest.raises(ValueError, match="eps must be > 0"):
        VESDE(eps=0.0)
    with pytest.raises(ValueError, match="beta_min must be positive"):
        VPSDE(beta_min=-0.1)
    with pytest.raises(ValueError, match="beta_max must be larger than beta_min"):
        SubVPSDE(beta_min=5.0, beta_max=1.0)
    with pytest.raises(ValueError, match="sigma_max must be larger than sigma_min"):
        VESDE(sigma_min=1.0, sigma_max=1.0)
    with pytest.raises(ValueError, match=r"t must lie in \[eps, T\]"):
        VPSDE().marginal(jnp.ones((2, 2)), 1.5)
    with pytest.raises(ValueError, match=r"t must lie in \[eps, T\]"):
        VPSDE().marginal(jnp.ones((2, 2)), jnp.array([0.5, 0.0]))


def test_abstract_final_pattern():
    """Equinox's abstract / final pattern in sde, parameterization, losses and analytic:
    a class that is subclassed is named Abstract* and cannot be instantiated; no method
    or property overrides a concrete one of a base class (only abstract ones are
    implemented). Checked on the classes as defined, so a new class is covered too."""
    import dataclasses
    import inspect

    import equinox as eqx

    from scoresde import analytic, losses, parameterization, sde
    from scoresde.analytic import calibration, gaussian, ideal, local

    mods = [sde, parameterization, losses, analytic, gaussian, ideal, local, calibration]
    classes = list({c for m in mods for c in vars(m).values()
                    if isinstance(c, type) and issubclass(c, eqx.Module) and c.__module__.startswith("scoresde.")})
    assert len(classes) > 20
    for cls in classes:
        if cls.__name__.startswith("Abstract"):
            with pytest.raises(TypeError, match="abstract"):
                cls()
            # Fields live in final classes (an abstract one names them with eqx.AbstractVar).
            assert not dataclasses.fields(cls), (cls.__name__, [f.name for f in dataclasses.fields(cls)])
        else:
            subs = [c.__name__ for c in classes if c is not cls and issubclass(c, cls)]
            assert not subs, f"{cls.__name__} is concrete but subclassed by {subs}; make it Abstract*"
        for name, member in vars(cls).items():
            if (name.startswith("__") and name != "__call__") or not (
                    inspect.isfunction(member) or isinstance(member, property)):
                continue
            for base in cls.__mro__[1:]:
                if base is eqx.Module or name not in vars(base):
                    continue
                assert getattr(vars(base)[name], "__isabstractmethod__", False), (
                    f"{cls.__name__}.{name} overrides the concrete {base.__name__}.{name}")
                break
