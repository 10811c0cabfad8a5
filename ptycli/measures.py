"""What the error measures of a reconstruction mean: the one place that defines them.

Engines report these numbers every iteration; they are the columns of a
result file's ``/history`` (each dataset carries its ``description`` and
``units`` from here), the ``final_errors`` of ``ptycli reconstruct --json``
and ``ptycli inspect``, and ``ptycli params errors`` prints them.
Sums run over the valid (unmasked) detector pixels of all frames; ``I`` is the
measured count of a pixel, ``A`` the model's amplitude there
(``sqrt(sum over modes |F|^2)`` of the exit waves' far-field or near-field
transforms ``F``).

This module imports nothing heavy (``ptycli --help`` and ``ptycli params``
read it).
"""

__all__ = ["ERROR_MEASURES", "measure_doc", "measure_units"]

#: name -> (units, one-paragraph definition)
ERROR_MEASURES = {
    "fourier_error": (
        "counts per pixel",
        "mean of (A - sqrt(I))^2 over the valid pixels: how far the modelled amplitudes are from "
        "the measured ones. About 0.25 once only counting (Poisson) noise is left; lower is "
        "better. For DM and RAAR it is that of the projection input (a mix of probe x object and "
        "the exit waves), which can rise while the reconstruction improves: "
        "model_fourier_error is the error of probe x object itself."),
    "photon_error": (
        "",
        "mean of (A^2 - I)^2 / (I + 1) over the valid pixels: the intensity misfit in units of "
        "the counting noise. About 1 at the Poisson noise level; lower is better."),
    "exit_change": (
        "",
        "the squared norm of the change of the exit waves in the iteration divided by the "
        "measured counts (sum of I): how much the iteration moved the solution. It falls "
        "towards 0 as the engine converges."),
    "likelihood": (
        "",
        "ML and LSQML: the negative log-likelihood of the data under the engine's noise model "
        "(ML_type: gaussian, poisson, euclid, or auto: poisson on photon counts; LSQML's noise_model: "
        "gaussian on amplitudes, poisson), divided by the number of valid pixels, without terms of "
        "the data alone (poisson: the deviance, 0 for a perfect fit). About 1 at the noise level for "
        "ML's gaussian, about 0.5 for poisson where the counts are high; lower is better; null for "
        "the other engines."),
    "model_fourier_error": (
        "counts per pixel",
        "DM and RAAR: fourier_error of probe x object itself (not of the projection input), "
        "computed at about 8 iterations per engine and at its last (null at the others). The "
        "measure to compare DM and RAAR runs by, and what the health check uses."),
    "model_photon_error": (
        "",
        "DM and RAAR: photon_error of probe x object itself, at the iterations where "
        "model_fourier_error is computed (null at the others)."),
}


def measure_doc(name):
    """The definition of error measure ``name`` (KeyError for unknown names)."""
    return ERROR_MEASURES[name][1]


def measure_units(name):
    """The units of error measure ``name`` ('' when it has none)."""
    return ERROR_MEASURES[name][0]
