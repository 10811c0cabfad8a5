"""The FFT layer (ptycli.core.fft): both libraries against numpy, alignment, chunks, wisdom."""

import numpy as np
import pytest

from ptycli.core import fft

BACKENDS = fft.available_backends()


@pytest.fixture
def library(request):
    fft.set_backend(request.param)
    yield request.param
    fft.set_backend(None)


def _stack(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)


@pytest.mark.parametrize("library", BACKENDS, indirect=True)
@pytest.mark.parametrize("dtype,tol", [(np.complex64, 2e-6), (np.complex128, 1e-13)])
@pytest.mark.parametrize("shape", [(24, 24), (5, 24, 24), (37, 16, 16), (3, 56, 72), (2, 3, 9, 7)])
def test_transforms_are_unitary_numpy_ffts_in_place(library, dtype, tol, shape):
    a = _stack(shape, dtype)
    x = a.copy()
    out = fft.fft2_inplace(x, 1)
    assert out is x and x.dtype == dtype
    ref = np.fft.fft2(a.astype(np.complex128), norm="ortho")
    assert np.abs(x - ref).max() <= tol * np.abs(ref).max()
    np.testing.assert_allclose(np.vdot(x, x).real, np.vdot(a, a).real, rtol=10 * tol)  # Parseval
    back = fft.ifft2_inplace(x, 2)
    assert back is x
    assert np.abs(x - a).max() <= 2 * tol * np.abs(a).max()


@pytest.mark.parametrize("library", BACKENDS, indirect=True)
def test_numbers_do_not_depend_on_where_the_array_lies(library):
    """The same frames in an aligned and in a misaligned buffer transform to identical bits."""
    a = _stack((7, 20, 20), np.complex64, seed=3)  # 3200-byte frames: chunks after the first misaligned too
    aligned = fft.empty(a.shape, a.dtype)
    assert aligned.ctypes.data % fft.ALIGNMENT == 0
    raw = fft.empty(a.size + 1, a.dtype)
    shifted = raw[1:].reshape(a.shape)
    assert shifted.ctypes.data % fft.ALIGNMENT != 0
    aligned[...] = a
    shifted[...] = a
    np.testing.assert_array_equal(fft.fft2_inplace(aligned, 1), fft.fft2_inplace(shifted, 1))
    np.testing.assert_array_equal(fft.ifft2_inplace(aligned, 2), fft.ifft2_inplace(shifted, 2))


@pytest.mark.parametrize("library", BACKENDS, indirect=True)
def test_bound_pair_gives_the_numbers_of_the_plain_calls(library):
    buf = fft.empty((1, 32, 32), np.complex64)
    fw, bw = fft.bound_pair(buf)
    a = _stack(buf.shape, np.complex64, seed=4)
    buf[...] = a
    assert fw() is buf
    np.testing.assert_array_equal(buf, fft.fft2_inplace(a.copy(), 1))
    f = buf.copy()
    bw()
    np.testing.assert_array_equal(buf, fft.ifft2_inplace(f, 1))


def test_chunks_cover_the_stack_with_few_sizes():
    for n in (1, 2, 15, 31, 32, 33, 100, 257):
        sizes = fft._chunks(n)
        assert sum(sizes) == n
        assert all(s == fft.MAX_CHUNK for s in sizes[:-1]) and 0 < sizes[-1] <= fft.MAX_CHUNK
    assert fft._chunks(15) == [15] and fft._chunks(37) == [16, 16, 5]


def test_backend_choice_and_errors(monkeypatch):
    assert fft.available_backends()[-1] == "pocketfft"
    monkeypatch.setenv("PTYCLI_FFT", "pocketfft")
    assert fft.backend() == "pocketfft"
    monkeypatch.delenv("PTYCLI_FFT")
    assert fft.backend() == fft.available_backends()[0]
    with pytest.raises(ValueError, match="one of fftw, pocketfft"):
        fft.set_backend("cufft")
    fft.set_backend("pocketfft")
    try:
        assert fft.backend() == "pocketfft"
    finally:
        fft.set_backend(None)


def test_workers_setting():
    fft.set_workers(3)
    try:
        assert fft.get_workers() == 3
        from ptycli.core import geometry
        assert geometry.get_workers() == 3  # the propagators' module names the same setting
    finally:
        fft.set_workers(None)
    with pytest.raises(ValueError, match=">= 1"):
        fft.set_workers(0)


@pytest.mark.skipif("fftw" not in BACKENDS, reason="pyfftw is not installed")
def test_fftw_wisdom_is_saved_where_asked(tmp_path, monkeypatch):
    monkeypatch.setenv("PTYCLI_CACHE_DIR", str(tmp_path / "cache"))
    fft.set_backend("fftw")
    try:
        fft.fft2_inplace(_stack((3, 19, 23), np.complex128, seed=7), 1)  # a shape no other test plans
    finally:
        fft.set_backend(None)
    path = tmp_path / "cache" / ("fftw-wisdom-%s.pickle" % fft._fftw_module().__version__)
    assert path.exists() and path.stat().st_size > 0
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [path.name]  # no temporary left


@pytest.mark.skipif("fftw" not in BACKENDS, reason="pyfftw is not installed")
def test_fftw_plans_share_scratch_and_let_go_of_the_transformed_array(tmp_path, monkeypatch):
    import gc
    import weakref
    monkeypatch.setenv("PTYCLI_CACHE_DIR", str(tmp_path / "cache"))
    fft.set_backend("fftw")
    try:
        x = fft.empty((2, 17, 21), np.complex64)  # aligned: transformed in place, not through the scratch
        x[...] = _stack((2, 17, 21), np.complex64, seed=3)
        want = np.fft.ifft2(np.fft.fft2(x, norm="ortho"), norm="ortho")
        fft.ifft2_inplace(fft.fft2_inplace(x, 1), 1)
        np.testing.assert_allclose(x, want, rtol=1e-5, atol=1e-5)
        fw, scratch_fw = fft._plan(x.shape, x.dtype, True)
        bw, scratch_bw = fft._plan(x.shape, x.dtype, False)
        assert scratch_fw is scratch_bw  # one scratch per thread and shape, not per direction
        assert fw.input_array is scratch_fw and bw.input_array is scratch_bw  # pointed back after the transform
        ref = weakref.ref(x)
        del x
        gc.collect()
        assert ref() is None  # no plan keeps the caller's array alive
    finally:
        fft.set_backend(None)


@pytest.mark.parametrize("library", BACKENDS, indirect=True)
@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_deferred_transforms_with_their_factor_give_the_unitary_numbers(library, dtype):
    """fft2_deferred/ifft2_deferred times the factor they return: the numbers of fft2_inplace/ifft2_inplace,
    bit for bit (FFTW leaves 1/sqrt(H W) to the caller; pocketfft scales itself and returns 1)."""
    a = _stack((5, 24, 40), dtype, seed=3)
    for plain, deferred in ((fft.fft2_inplace, fft.fft2_deferred), (fft.ifft2_inplace, fft.ifft2_deferred)):
        real = np.finfo(dtype).dtype
        want = plain(_copy_aligned(a), 1)
        got, factor = deferred(_copy_aligned(a), 1)
        assert factor.dtype == real
        assert factor == (real.type(1 / np.sqrt(24 * 40)) if library == "fftw" else 1)
        got.view(got.real.dtype)[...] *= factor  # each real and imaginary part, as the kernels do
        np.testing.assert_array_equal(got, want)
        assert np.abs(got).max() < 20  # unitary: |x| stays of order one (not sqrt(H W) larger)


def _copy_aligned(a):
    out = fft.empty(a.shape, a.dtype)
    out[...] = a
    return out
