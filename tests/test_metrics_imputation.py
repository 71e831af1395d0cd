"""The batched noisy linear imputation against the per-image scipy reference
of `road_fill.noisy_linear_fill`."""

import numpy as np
import pytest

from roar_jax.data import host_fill
from roar_jax.data import imputation
from roar_jax.data import road_fill


def _case(granularity, seed=0, b=6, h=20, w=17):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (b, h, w, 3)).astype(np.uint8)
  shape = (b, h, w) if granularity == "pixel" else (b, h, w, 3)
  removed = rng.random(shape) < np.linspace(0.1, 0.95, b).reshape(
      (b,) + (1,) * (len(shape) - 1))
  # A large removed block (rows 2..15 of image 0): the hardest system.
  removed[0, 2:16] = True
  indices = np.arange(b) * 7 + 3
  return images, removed, indices


def _reference(images, removed, indices, seed):
  """The reference's values before rounding, [0, 1] units (float64)."""
  out = images.astype(np.float64) / 255.0
  for i in range(len(images)):
    m = removed[i] if removed.ndim == 4 else removed[i][..., None]
    noise = road_fill.noise_rng(seed, int(indices[i])).normal(
        0.0, road_fill.NOISY_LINEAR_STD, size=images.shape[1:])
    groups = ([(m[..., 0], slice(None))] if m.shape[-1] == 1 else
              [(m[..., c], slice(c, c + 1)) for c in range(3)])
    for mask, chans in groups:
      values = road_fill._harmonic_fill(  # pylint: disable=protected-access
          images[i][:, :, chans] / 255.0, mask)
      r, c = np.nonzero(mask)
      out[i, r, c, chans] = values + noise[r, c][:, chans]
  return out


@pytest.mark.parametrize("granularity", ["pixel", "value"])
@pytest.mark.parametrize("solver", ["cg", "scipy", "banded"])
def test_batched_imputation_equals_the_reference(granularity, solver):
  images, removed, indices = _case(granularity)
  seed = 5
  expected = _reference(images, removed, indices, seed)
  noise = imputation.noise(indices, images.shape[1:], seed=seed)
  m = removed if removed.ndim == 4 else removed[..., None]
  x = images / 255.0
  fills = {"cg": imputation.harmonic_fill,
           "scipy": host_fill.harmonic_fill_scipy,
           "banded": host_fill.harmonic_fill_banded}
  filled = np.asarray(fills[solver](x, m))
  got = np.where(m, filled + noise, x)
  np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
  # Kept values untouched, bit for bit.
  keep = np.broadcast_to(~m, images.shape)
  np.testing.assert_array_equal(filled[keep], x[keep])
  # uint8 out: the reference's bytes (a value within 1e-5 of a rounding
  # boundary may round the other way: at most one level, almost never).
  out = np.asarray(imputation.noisy_linear(images, removed, noise,
                                           solver=solver))
  ref = np.stack([road_fill.noisy_linear_fill(
      images[i], m[i], seed=seed, index=int(indices[i]))
                  for i in range(len(images))])
  diff = np.abs(out.astype(int) - ref.astype(int))
  assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
  np.testing.assert_array_equal(out[keep], images[keep])


def test_float32_cg_is_close_and_removing_everything_is_refused():
  images, removed, _ = _case("pixel", seed=1)
  m = removed[..., None]
  f64 = np.asarray(imputation.harmonic_fill(images / 255.0, m))
  f32 = np.asarray(imputation.harmonic_fill(images / 255.0, m,
                                            precision="float32"))
  # float32 stalls at ~cond * 6e-8; still far below one uint8 step (1/255).
  assert np.abs(f32 - f64).max() < 2e-4
  full = np.zeros_like(m)
  full[2] = True
  with pytest.raises(ValueError, match="every pixel of image 9"):
    imputation.check_removable(full, indices=np.arange(6) + 7)


def test_banded_chunks_agree_and_a_singular_system_is_refused(monkeypatch):
  images, removed, _ = _case("value", seed=2)
  x = images / 255.0
  whole = host_fill.harmonic_fill_banded(x, removed)
  np.testing.assert_allclose(whole, host_fill.harmonic_fill_scipy(x, removed),
                             atol=1e-12, rtol=0)
  # One image (channel) per LAPACK call: the stacked systems do not couple.
  monkeypatch.setattr(host_fill, "CHUNK_BYTES", 1)
  np.testing.assert_allclose(host_fill.harmonic_fill_banded(x, removed),
                             whole, atol=1e-12, rtol=0)
  full = np.zeros(images.shape[:3] + (1,), bool)
  full[3] = True
  with pytest.raises(ValueError, match="every pixel of image 3"):
    host_fill.harmonic_fill_banded(x, full)


def test_auto_solves_on_the_host_on_a_cpu():
  assert imputation.resolve_solver("auto") == "banded"
  assert imputation.resolve_solver("cg") == "cg"
  with pytest.raises(ValueError, match="solver='lu'"):
    imputation.resolve_solver("lu")
