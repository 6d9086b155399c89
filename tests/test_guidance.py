"""Tests of scoresde.guidance: guided scores, operators, exact conditional laws and the
inverse-problem methods against those laws (Gaussian and Gaussian-mixture data, exact
scores), everything through `scoresde.sampling.sample(..., cond=...)`.

Tolerances: moment comparisons use the Monte-Carlo standard error of the sample
(|error| <= 4.5 SE per coordinate / covariance entry), plus a small absolute slack for
coordinates whose exact posterior variance is (nearly) zero (observed pixels).
The user-facing frictions of issue 13 (item 7) are tested on the 2-D ring in
tests/test_guidance_ring.py."""

import numpy as np
import pytest

import equinox as eqx
import jax
import jax.numpy as jnp

from scoresde import VPSDE, GaussianMixture
from scoresde.guidance import (
    AveragePool, Colorization, Inpainting, ODEEulerPredictor, ReplacementSampler, TwistedSMC,
    cfg_score, classifier_free_guidance, classifier_guided_score, dps_score, exact_posterior,
    gaussian_condition, mixture_condition, operator_matrix, pigdm_score, tweedie_cov_score)
from scoresde.parallel import pmap_over_batch
from scoresde.sampling import (DPMSolverPP, EulerMaruyama, LangevinCorrector, PredictorCorrector,
                               ProbabilityFlowODE, sample)

SDE = VPSDE()
XS = (2, 4, 1)  # one example: 2 x 4 image, 1 channel -> D = 8
D = 8
VAR = 0.5
MASK = jnp.array([[1, 0, 1, 0], [0, 1, 1, 0]], jnp.float32)[..., None]


@pytest.fixture(scope="module")
def iso():
    """Isotropic Gaussian N(mu, VAR I): Pi-GDM (data_var=VAR) and replacement are exact."""
    mu = jnp.linspace(-1.0, 1.0, D)
    return GaussianMixture.isotropic(jnp.ones(1), mu[None], VAR)


def _ignore_y(score_fn):
    """The replacement method's score: the prior, called score(x, t, y)."""
    return lambda x, t, y: score_fn(x, t)


def _moment_check(samples, post, atol=2e-2, zmax=4.5):
    s = np.asarray(samples, np.float64).reshape(samples.shape[0], -1)
    assert np.all(np.isfinite(s)), "non-finite samples"
    n = s.shape[0]
    m_ex = np.asarray(post.mean(), np.float64)
    C_ex = np.asarray(post.covariance(), np.float64)
    err = s.mean(0) - m_ex
    se = np.sqrt(np.maximum(np.diag(C_ex), 0) / n)
    assert np.all(np.abs(err) <= zmax * se + atol), (err, se)
    dC = np.cov(s.T) - C_ex
    d = np.maximum(np.diag(C_ex), 0.0)
    se_c = np.sqrt(np.maximum(np.outer(d, d) + C_ex**2, 0.0) / n)
    assert np.all(np.abs(dC) <= zmax * se_c + atol), (dC, se_c)


# --- guidance combinators ------------------------------------------------------------
def test_cfg_formula_labels_and_per_example_weights():
    x = jnp.ones((3, 2))
    s_c = lambda x, t, c: 2.0 * x * c[:, None]  # noqa: E731
    s_u = lambda x, t: -x  # noqa: E731
    c = jnp.ones(3)
    np.testing.assert_allclose(cfg_score(s_c, s_u, 0.0)(x, 0.5, c), s_c(x, 0.5, c))
    np.testing.assert_allclose(cfg_score(s_c, s_u, 2.0)(x, 0.5, c), 3 * 2 * x + 2 * x)
    # one weight per example through cond = (c, w): row i is the scalar formula at w_i
    w = jnp.array([0.0, 1.0, 3.0])
    got = cfg_score(s_c, s_u)(x, 0.5, (c, w))
    np.testing.assert_allclose(got, (1 + w[:, None]) * 2 * x + w[:, None] * x)
    net = lambda x, t, y: x * (y[:, None] + 1.0)  # noqa: E731
    g = classifier_free_guidance(net, 1.0, num_classes=3)
    # null label = num_classes = 3 -> factor 4; cond factors 1, 2, 3
    np.testing.assert_allclose(g(x, 0.5, jnp.array([0, 1, 2])), 2 * x * jnp.array([1.0, 2, 3])[:, None] - 4 * x)
    with pytest.raises(ValueError, match=r"labels contains class ids \[10\].*\[0, 10\)"):
        classifier_free_guidance(net, 1.0, num_classes=10)(x[:2], 0.5, jnp.array([3, 10]))
    with pytest.raises(ValueError, match="shape \\(batch,\\) = \\(3,\\)"):
        g(x, 0.5, jnp.array([1, 2]))
    with pytest.raises(ValueError, match=r"cond must be the pair \(labels, w\)"):
        classifier_free_guidance(net, num_classes=3)(x, 0.5, jnp.array([0, 1, 2]))
    with pytest.raises(ValueError, match="one weight per example; got shape \\(2,\\)"):
        classifier_free_guidance(net, num_classes=3)(x, 0.5, (jnp.array([0, 1, 2]), jnp.ones(2)))


def test_classifier_guidance_is_bayes_exact():
    """grad log p_t(x) + grad log p_t(k | x) = grad log p_t(x | k): with the exact
    noise-conditional 'classifier' of a mixture, guidance gives the component's score;
    the requested class k travels per example as cond."""
    gm = GaussianMixture.diagonal(jnp.array([0.3, 0.7]), jnp.array([[1.0, -1.0], [-1.0, 2.0]]),
                                  jnp.array([[0.5, 1.0], [2.0, 0.3]]))
    x = jax.random.normal(jax.random.key(0), (6, 2))
    t = jnp.full((6,), 0.3)
    labels = jnp.array([0, 1, 0, 1, 1, 0])

    def logp(v, t, lab):
        return jnp.log(jnp.take_along_axis(gm.posterior_weights(v, t, SDE), lab[:, None], 1)[:, 0])

    comps = [GaussianMixture(jnp.ones(1), gm.means[k:k + 1], gm.covs[k:k + 1]) for k in range(2)]
    got = jax.jit(lambda x, t, lab: classifier_guided_score(gm.score_fn(SDE), logp, 1.0)(x, t, lab))(x, t, labels)
    want = jnp.where(labels[:, None] == 0, comps[0].score(x, t, SDE), comps[1].score(x, t, SDE))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


# --- operators -----------------------------------------------------------------------
@pytest.mark.parametrize("op,shape", [(Inpainting(MASK), (3,) + XS), (AveragePool(2), (3, 4, 6, 2)),
                                      (Colorization(3), (3, 2, 2, 3))])
def test_operator_algebra(op, shape):
    kx, ky = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, shape)
    y = op.apply(jax.random.normal(ky, shape))
    # adjoint: <A x, y> = <x, A^T y>
    np.testing.assert_allclose(jnp.sum(op.apply(x) * y), jnp.sum(x * op.transpose(y)), rtol=1e-5)
    np.testing.assert_allclose(op.apply(op.pinv(y)), y, atol=1e-6)  # A A^+ = I
    np.testing.assert_allclose(op.apply(op.replace(x, y)), y, atol=1e-6)
    # the null-space part of x is kept: replace(x, y) - x lies in range(A^T)
    r = op.replace(x, y) - x
    np.testing.assert_allclose(op.pinv(op.apply(r)), r, atol=1e-5)


def test_shape_errors():
    x = jnp.zeros((2,) + XS)
    with pytest.raises(ValueError, match="mask has shape .* does not fit one example of shape"):
        Inpainting(jnp.ones((3, 4, 1))).check_data(x)
    with pytest.raises(ValueError, match="mask must contain only 0"):
        Inpainting(jnp.full(XS, 0.5))
    with pytest.raises(ValueError, match=r"factor=3.*divisible by 3"):
        AveragePool(3).apply(x)
    with pytest.raises(ValueError, match=r"images of shape \(batch, H, W, C\)"):
        AveragePool(2).apply(jnp.zeros((2, 8)))
    with pytest.raises(ValueError, match="Colorization\\(channels=3\\) got data with C=1"):
        Colorization(3).apply(x)
    gm = GaussianMixture.isotropic(jnp.ones(1), jnp.zeros((1, D)), 1.0)
    bad_y = jnp.zeros((2, 2, 4, 1))
    s = pigdm_score(gm.score_fn(SDE), SDE, AveragePool(2))
    with pytest.raises(ValueError, match=r"y has shape \(2, 2, 4, 1\) but AveragePool maps"):
        s(x, 0.5, bad_y)
    with pytest.raises(ValueError, match="pigdm_score has no observation: pass one observation per example"):
        s(x, 0.5)
    with pytest.raises(ValueError, match="got the observation twice"):
        pigdm_score(gm.score_fn(SDE), SDE, AveragePool(2), y=jnp.zeros((1, 2, 1)))(x, 0.5, jnp.zeros((2, 1, 2, 1)))
    with pytest.raises(ValueError, match="sigma_y must be a scalar > 0"):
        dps_score(gm.score_fn(SDE), SDE, AveragePool(2), sigma_y=0.0)
    with pytest.raises(ValueError, match="y must be one observation of shape"):
        exact_posterior(gm, AveragePool(2), bad_y, XS)


# --- exact conditional laws ----------------------------------------------------------
def test_mixture_condition_vs_importance_sampling():
    """Closed-form p(x | y) of a 2-component mixture in 3-D with y = A x + 0.3 n, against
    self-normalised importance sampling from the prior (x64, 60k draws)."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        L = rng.normal(size=(2, 3, 3)) * 0.5
        covs = L @ np.swapaxes(L, 1, 2) + 0.2 * np.eye(3)
        gm = GaussianMixture(jnp.array([0.4, 0.6]), jnp.array([[1.0, 0.0, -1.0], [-1.0, 1.0, 0.5]]),
                             jnp.asarray(covs))
        A = jnp.asarray(rng.normal(size=(2, 3)))
        sy = 0.3
        y = jnp.array([0.4, -0.2])
        post = mixture_condition(gm, A, y, sy)
        x, k = gm.sample_with_labels(jax.random.key(3), 60_000)
        logw = -0.5 * jnp.sum((x @ A.T - y) ** 2, -1) / sy**2
        w = np.asarray(jax.nn.softmax(logw))
        ess = 1.0 / np.sum(w**2)
        x = np.asarray(x)
        m_is = w @ x
        C_is = (x - m_is).T @ ((x - m_is) * w[:, None])
        wk = np.array([w[np.asarray(k) == j].sum() for j in range(2)])
        C_ex = np.asarray(post.covariance())
        se_m = np.sqrt(np.diag(C_ex) / ess)
        assert ess > 1_000
        assert np.all(np.abs(m_is - np.asarray(post.mean())) < 4.5 * se_m)
        d = np.diag(C_ex)
        assert np.all(np.abs(C_is - C_ex) < 4.5 * np.sqrt((np.outer(d, d) + C_ex**2) / ess))
        se_w = np.sqrt(post.weights * (1 - post.weights) / ess)
        assert np.all(np.abs(wk - np.asarray(post.weights)) < 4.5 * se_w)
        # a single component reduces to Gaussian conditioning; noise-free limit is continuous
        m1, C1, _ = gaussian_condition(gm.means[0], gm.covs[0], A, y, 0.0)
        one = mixture_condition(GaussianMixture(jnp.ones(1), gm.means[:1], gm.covs[:1]), A, y, 1e-5)
        np.testing.assert_allclose(one.means[0], m1, atol=1e-6)
        np.testing.assert_allclose(one.covs[0], C1, atol=1e-6)
        np.testing.assert_allclose(A @ m1, y, atol=1e-10)  # noise-free: A x = y exactly
        np.testing.assert_allclose(A @ C1 @ A.T, 0.0, atol=1e-10)


def test_exact_posterior_operator_matrix(iso):
    A = operator_matrix(AveragePool(2), XS)
    assert A.shape == (2, D)
    np.testing.assert_allclose(A @ A.T, np.eye(2) / 4, atol=1e-7)
    assert operator_matrix(Inpainting(MASK), XS).shape == (int(MASK.sum()), D)


# --- guided scores against the exact conditional score -----------------------------------
def _corr_gaussian():
    rng = np.random.default_rng(0)
    L = rng.normal(size=(D, D)) * 0.4
    return GaussianMixture(jnp.ones(1), jnp.linspace(-1.0, 1.0, D)[None],
                           jnp.asarray(L @ L.T + 0.1 * np.eye(D), jnp.float32)[None])


@pytest.mark.parametrize("op,xs", [(Inpainting(MASK), XS), (AveragePool(2), XS),
                                   (Colorization(2), (2, 2, 2))], ids=["inpaint", "sr2", "color"])
def test_guided_score_equals_exact_conditional_score(iso, op, xs):
    """p_t(x_t | y) is the noised exact posterior, so grad log p_t(x_t | y) is known in closed
    form. Pi-GDM (isotropic data, data_var = VAR) and the Tweedie-covariance guidance (dense
    covariance) must reproduce it at every t (sigma_y = 0 and sigma_y = 0.2)."""
    corr = _corr_gaussian()
    B = 4
    t = jnp.array([0.05, 0.2, 0.5, 0.9])
    with jax.enable_x64(True):
        for gm, make in [(iso, lambda gm, sy: pigdm_score(gm.score_fn(SDE), SDE, op, sigma_y=sy, data_var=VAR)),
                         (corr, lambda gm, sy: tweedie_cov_score(gm.score_fn(SDE), SDE, op, sigma_y=sy))]:
            f64 = lambda a: a.astype(jnp.float64)  # noqa: E731 - rebuild: eigh in float64 too
            gm = GaussianMixture(f64(gm.weights), f64(gm.means), f64(gm.covs))
            x0 = gm.sample(jax.random.key(2), 1).reshape((1,) + xs)
            y1 = op.apply(x0)
            x = SDE.prior_sample(jax.random.key(3), (B,) + xs, jnp.float64)
            f = jax.jit(lambda x, y, gm, sy: (make(gm, sy)(x, t, y), exact_posterior(gm, op, y[0], xs, sigma_y=sy)
                                              .score(x.reshape(B, -1), t, SDE).reshape(x.shape)))
            for sy in (0.0, 0.2):  # one compilation for both (sigma_y traced)
                got, want = f(x, jnp.broadcast_to(y1, (B,) + y1.shape[1:]), gm, jnp.float64(sy))
                np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9 * float(jnp.max(jnp.abs(want))))


def test_dps_terms_and_time_dependent_scale():
    """DPS guidance: plain = grad_x log N(y; A x0_hat(x), sigma_y^2 I) and the normalised
    step = -zeta grad_x ||y - A x0_hat(x)|| (Chung et al.), both by autodiff of the
    Tweedie denoiser; the twist is the Gaussian log-likelihood in both cases. A scale that
    is a function of t scales the guidance term per example: s + c(t) (guided - s)."""
    gm = _corr_gaussian()
    op = AveragePool(2)
    x = SDE.prior_sample(jax.random.key(3), (3,) + XS)
    y = op.apply(gm.sample(jax.random.key(2), 3).reshape((3,) + XS))
    t = jnp.array([0.1, 0.4, 0.8])
    sf = gm.score_fn(SDE)
    a, s = (c[:, None, None, None] for c in (SDE.alpha(t), SDE.sigma(t)))

    def resid(v):
        return (y - op.apply((v + s**2 * sf(v, t)) / a)).reshape(3, -1)

    def run(x):
        plain = dps_score(sf, SDE, op, sigma_y=0.3, normalize=False, scale=2.0)
        norm = dps_score(sf, SDE, op, sigma_y=0.3, zeta=1.7)
        loglik = lambda v: -0.5 * jnp.sum(resid(v) ** 2) / 0.3**2  # noqa: E731
        dist = lambda v: jnp.sum(jnp.sqrt(jnp.sum(resid(v) ** 2, axis=1)))  # noqa: E731
        full = pigdm_score(sf, SDE, op, sigma_y=0.3)(x, t, y)
        scaled = pigdm_score(sf, SDE, op, sigma_y=0.3, scale=lambda tb: SDE.alpha(tb) ** 2)(x, t, y)
        return (plain(x, t, y), sf(x, t) + 2.0 * jax.grad(loglik)(x), norm(x, t, y), sf(x, t) - 1.7 * jax.grad(dist)(x),
                norm.terms(x, t, y).log_twist, -0.5 * jnp.sum(resid(x) ** 2, axis=1) / 0.3**2,
                scaled, sf(x, t) + a**2 * (full - sf(x, t)))

    out = jax.jit(run)(x)
    for got, want in zip(out[::2], out[1::2]):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


# --- inverse-problem methods against the exact conditional law ---------------------------
@pytest.fixture(scope="module")
def problem(iso):
    x_true = iso.sample(jax.random.key(11), 1).reshape((1,) + XS)
    N = 3000
    xT = SDE.prior_sample(jax.random.key(12), (N,) + XS)
    return x_true, xT, N


def test_pigdm_exact_on_isotropic_gaussian(iso, problem):
    """Sampling check (2x super-resolution); the score identity itself is tested above for
    inpainting, super-resolution and colorisation."""
    x_true, xT, N = problem
    op = AveragePool(2)
    y1 = op.apply(x_true)
    y = jnp.broadcast_to(y1, (N,) + y1.shape[1:])
    post = exact_posterior(iso, op, y1[0], XS)
    f = jax.jit(lambda k, x, y: sample(DPMSolverPP(n_steps=25), pigdm_score(
        iso.score_fn(SDE), SDE, op, data_var=VAR), SDE, k, x, cond=y, denoise=True))
    res = f(jax.random.key(0), xT, y)
    _moment_check(res.samples, post)


def test_tweedie_cov_exact_on_correlated_gaussian(problem):
    """With a dense covariance, Pi-GDM's isotropic r_t^2 is only approximate, but the
    exact Tweedie covariance makes p_t(y | x_t) exact: inpainting must match p(x | y)."""
    gm = _corr_gaussian()
    _, xT, N = problem
    op = Inpainting(MASK)
    y1 = op.apply(gm.sample(jax.random.key(11), 1).reshape((1,) + XS))
    y = jnp.broadcast_to(y1, (N,) + y1.shape[1:])
    post = exact_posterior(gm, op, y1[0], XS)
    f = jax.jit(lambda k, x, y: sample(DPMSolverPP(n_steps=20), tweedie_cov_score(
        gm.score_fn(SDE), SDE, op), SDE, k, x, cond=y, denoise=True))
    _moment_check(f(jax.random.key(0), xT, y).samples, post)


def test_replacement_inpainting_exact_and_observed_pixels(iso, problem):
    x_true, xT, N = problem
    op = Inpainting(MASK)
    y1 = op.apply(x_true)
    y = jnp.broadcast_to(y1, (N,) + y1.shape[1:])
    post = exact_posterior(iso, op, y1[0], XS)
    f = jax.jit(lambda k, x, y: sample(ReplacementSampler(op, 200), _ignore_y(iso.score_fn(SDE)), SDE, k, x,
                                       cond=y, denoise=True))
    res = f(jax.random.key(1), xT, y)
    assert int(res.nfe) == 201
    out = op.replace(res.samples, y)
    obs = np.asarray(MASK[None] > 0).repeat(N, 0)
    assert np.array_equal(np.asarray(out)[obs], np.asarray(y)[obs])  # bit-exact
    _moment_check(out, post)
    sampler = ReplacementSampler(op, 200, corrector=LangevinCorrector(n_steps=2))
    assert (sampler.order, sampler.evals_per_step) == (1, 3)


@pytest.fixture(scope="module")
def noisy_iso_problem(iso):
    """2x super-resolution of isotropic data with noise sigma_y = 0.3: the posterior of
    the observed directions has a spread that depends on the guidance's weighting."""
    op, sy, N = AveragePool(2), 0.3, 1500
    x_true = iso.sample(jax.random.key(21), 1).reshape((1,) + XS)
    y1 = op.apply(x_true) + sy * jax.random.normal(jax.random.key(22), (1, 1, 2, 1))
    xT = SDE.prior_sample(jax.random.key(23), (N,) + XS)
    return op, sy, jnp.broadcast_to(y1, (N,) + y1.shape[1:]), xT, exact_posterior(iso, op, y1[0], XS, sigma_y=sy)


@pytest.mark.parametrize("sampler", [PredictorCorrector(n_steps=60, corrector=LangevinCorrector()),
                                     ProbabilityFlowODE(rtol=1e-4, atol=1e-4)], ids=["pc", "pf-ode"])
def test_pigdm_law_through_pc_and_per_example_ode(iso, noisy_iso_problem, sampler):
    """Pi-GDM with the exact data_var samples p(x | y) exactly (up to discretisation), also
    through predictor-corrector and the adaptive per-example diffrax solve (which slices
    cond per example): law check against the exact posterior of a noisy observation
    (replaces a check of A x = y alone, which a wrong r_t^2 passes)."""
    op, sy, y, xT, post = noisy_iso_problem
    f = eqx.filter_jit(lambda s, k, x, y: sample(s, pigdm_score(iso.score_fn(SDE), SDE, op, sigma_y=sy, data_var=VAR),
                                                 SDE, k, x, cond=y, denoise=True).samples)
    _moment_check(f(sampler, jax.random.key(24), xT, y), post)


def test_replacement_law_with_ode_predictor(iso):
    """The replacement method on the probability-flow ODE (ODEEulerPredictor): exact in law
    for isotropic data (observed and unobserved parts independent) - law check of the
    unobserved pixels (replaces a check of A x = y, true by construction after op.replace)."""
    op, N = Inpainting(MASK), 1500
    y1 = op.apply(iso.sample(jax.random.key(31), 1).reshape((1,) + XS))
    y = jnp.broadcast_to(y1, (N,) + y1.shape[1:])
    xT = SDE.prior_sample(jax.random.key(32), (N,) + XS)
    s = ReplacementSampler(op, 100, predictor=ODEEulerPredictor())
    out = jax.jit(lambda k, x, y: op.replace(sample(s, _ignore_y(iso.score_fn(SDE)), SDE, k, x, cond=y,
                                                    denoise=True).samples, y))(jax.random.key(33), xT, y)
    _moment_check(out, exact_posterior(iso, op, y1[0], XS))


def test_guidance_through_pmap():
    """CFG (exact class-conditional scores of a 2-class mixture, null label = the mixture)
    and replacement sampling split over 2 devices give the single-device result;
    labels and observations travel as cond, sharded with the batch."""
    B = 8
    gm = GaussianMixture.isotropic(jnp.full(2, 0.5), jnp.stack([jnp.full(D, -2.0), jnp.full(D, 2.0)]), 0.1)
    comps = [GaussianMixture(jnp.ones(1), gm.means[k:k + 1], gm.covs[k:k + 1]) for k in range(2)]

    def net(x, t, lab):  # exact class-conditional score; label 2 = null (the mixture)
        s = [c.score(x, t, SDE) for c in comps] + [gm.score(x, t, SDE)]
        return jnp.select([(lab == i)[:, None, None, None] for i in range(3)], s)

    op = Inpainting(MASK)
    labels = jnp.arange(B) % 2
    x0 = gm.sample(jax.random.key(5), B).reshape((B,) + XS)
    y = op.apply(x0)
    xT = SDE.prior_sample(jax.random.key(6), (B,) + XS)
    keys = jax.random.split(jax.random.key(7), B)

    def run(k, x, lab, y):
        a = sample(DPMSolverPP(n_steps=10), classifier_free_guidance(net, 1.0, num_classes=2),
                   SDE, k, x, cond=lab, denoise=True).samples
        c = sample(ReplacementSampler(op, 10), _ignore_y(gm.score_fn(SDE)), SDE, k, x, cond=y, denoise=True).samples
        return jnp.stack([a, op.replace(c, y)], 1)

    one = jax.jit(run)(keys, xT, labels, y)
    two = pmap_over_batch(run, batched_argnums=(0, 1, 2, 3))(keys, xT, labels, y)
    np.testing.assert_allclose(two, one, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(jnp.mean(one[:, 0].reshape(B, -1), -1) > 0, labels == 1)
    obs = np.asarray(MASK[None] > 0).repeat(B, 0)
    assert np.array_equal(np.asarray(one[:, 1])[obs], np.asarray(y)[obs])


# --- twisted SMC ---------------------------------------------------------------------
def test_twisted_smc_corrects_pigdm_bias_on_a_mixture():
    """Bimodal posterior (posterior weights 0.92 / 0.08 from a 50/50 prior): Pi-GDM's
    Gaussian approximation of p(x_0 | x_t) misses the weights (mean off by > 7 SE), the
    twisted SMC weights correct it: mean within 4.5 SE with 32 particles."""
    rng = np.random.default_rng(0)
    L = rng.normal(size=(2, D, D)) * 0.3
    covs = L @ np.swapaxes(L, 1, 2) + 0.05 * np.eye(D)
    means = np.stack([np.linspace(-1, 1, D), -np.linspace(-1, 1, D)]) * 1.5
    gm = GaussianMixture(jnp.array([0.5, 0.5]), jnp.asarray(means, jnp.float32), jnp.asarray(covs, jnp.float32))
    op, sy, N, K = Inpainting(MASK), 0.2, 400, 32
    y1 = op.apply(jnp.zeros((1,) + XS))
    y = jnp.broadcast_to(y1, (N,) + y1.shape[1:])
    post = exact_posterior(gm, op, y1[0], XS, sigma_y=sy)
    assert abs(float(post.weights[0]) - 0.92) < 0.01
    m = np.asarray(post.mean())
    se = np.sqrt(np.diag(np.asarray(post.covariance())) / N)
    sm = TwistedSMC(100, K)
    assert (sm.order, sm.evals_per_step) == (1, 1)
    x_T = SDE.prior_sample(jax.random.key(1), (N,) + XS)
    score = pigdm_score(gm.score_fn(SDE), SDE, op, sigma_y=sy, data_var=float(jnp.trace(gm.covariance())) / D)
    run = eqx.filter_jit(lambda s, k, x, y: sample(s, score, SDE, k, x, cond=y, denoise=True))
    out = run(sm, jax.random.key(2), x_T, y)
    assert out.samples.shape == (N,) + XS and int(out.nfe) == 102
    z = np.abs(np.asarray(out.samples).reshape(N, -1).mean(0) - m) / se
    assert np.max(z) < 4.5, z
    z_pig = np.abs(np.asarray(run(EulerMaruyama(100), jax.random.key(2), x_T, y).samples).reshape(N, -1).mean(0)
                   - m) / se
    assert np.max(z_pig) > 7, z_pig
    with pytest.raises(TypeError, match="TwistedSMC needs a twisted score"):
        sample(sm, tweedie_cov_score(gm.score_fn(SDE), SDE, op, sigma_y=sy), SDE, jax.random.key(0), x_T[:2],
               cond=y[:2])
    with pytest.raises(ValueError, match="no single trajectory"):
        sample(sm, score, SDE, jax.random.key(0), x_T[:2], cond=y[:2], trajectory=True)
