r"""derive — a symbolic derivation assistant for the 1/width expansion of deep networks.

The conventions (parametrisation, normalisations, index placement) are those of
*The Principles of Deep Learning Theory* (Roberts, Yaida, Hanin) as fixed in THEORY.md.

The facade below is short on purpose; everything else lives in modules named by what they
do (``derive.contractions``, ``derive.pairings``, ``derive.gaussian``, ...).  Names are imported
lazily so that ``import derive`` stays fast.

Symbolic Gaussian engine
    :func:`wick`, :class:`E`, :func:`neuron_indices`, :func:`sample_indices`,
    :func:`gaussian_field`, :func:`nearly_gaussian_field`, :func:`bias`, :func:`weight`,
    :func:`tensor`, :class:`NeuronSum`, :func:`simplify_sums`,
    :func:`split_sum`, :func:`cumulant`, :func:`moment_from_cumulants`,
    :func:`nearly_gaussian_expectation`, :func:`perturbative_expectation`,
    :func:`evaluate_averages`, :class:`Graded`, :class:`Trace`
Activations and their Gaussian expectations
    :func:`activation`, :func:`known_activations`, :func:`gaussian_expectation`
User strings
    :func:`parse` (an ``ast`` whitelist: nothing is evaluated), :class:`DeriveError` (the only
    exception a public function raises)
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_FACADE = {
    # errors and the parser of user strings
    "DeriveError": "errors",
    "parse": "parsing",
    # symbolic engine
    "NeuronIndex": "symbols",
    "SampleIndex": "symbols",
    "neuron_indices": "symbols",
    "sample_indices": "symbols",
    "Family": "symbols",
    "gaussian_field": "symbols",
    "nearly_gaussian_field": "symbols",
    "bias": "symbols",
    "weight": "symbols",
    "tensor": "symbols",
    "NeuronSum": "symbols",
    "GaussianAverage": "symbols",
    "DerivativeContraction": "symbols",
    "simplify_sums": "contractions",
    "wick": "contractions",
    "E": "contractions",
    "Trace": "trace",
    "split_sum": "contractions",
    "cumulant": "cumulants",
    "moment_from_cumulants": "cumulants",
    "nearly_gaussian_expectation": "nearly_gaussian",
    "perturbative_expectation": "nearly_gaussian",
    "evaluate_averages": "nearly_gaussian",
    "integrate_by_parts": "nearly_gaussian",
    "collapse_contractions": "nearly_gaussian",
    "Graded": "graded",
    # activations and numeric Gaussian expectations
    "Activation": "activations",
    "activation": "activations",
    "known_activations": "activations",
    "gaussian_expectation": "gaussian",
    "GaussianValue": "gaussian",
    # networks
    "MLP": "spec",
    "derive": "derivation",
    "Derivation": "derivation",
    "predict": "prediction",
    "criticality": "critical",
    "Criticality": "critical",
    "check": "reality",
    "Check": "reality",
    "Prediction": "prediction",
}

__all__ = sorted(_FACADE) + ["__version__"]


def __getattr__(name: str):
    try:
        module = _FACADE[name]
    except KeyError:
        raise AttributeError(f"module 'derive' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f"derive.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
