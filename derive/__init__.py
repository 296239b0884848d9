r"""derive — a symbolic derivation assistant for the 1/width expansion of deep networks.

The conventions (parametrisation, normalisations, index placement) are those of
*The Principles of Deep Learning Theory* (Roberts, Yaida, Hanin) as fixed in docs/conventions.md.

The facade below is short on purpose; everything else lives in modules named by what they
do, in one sub-package per stage of the pipeline, each importing only from its own stage and
the ones before it (tests/test_layout.py):

    base → algebra → activations → architectures → derivation → emit → numeric → reality → cli

``derive.base`` (errors, the parser of user strings, rule files), ``derive.algebra`` (the
symbolic Gaussian engine: ``derive.algebra.contractions``, ``derive.algebra.pairings``, ...),
``derive.activations`` (the catalogue, Gaussian expectations, criticality),
``derive.architectures`` (``MLP``), ``derive.derivation`` (the layer step and ``derive``),
``derive.emit`` (LaTeX, documents, numpy modules), ``derive.numeric`` (``predict``),
``derive.reality`` (Monte Carlo, ``check``) and ``derive.cli`` (the ``derive`` command).
Names are imported lazily so that ``import derive`` stays fast.

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
    "DeriveError": "base.errors",
    "parse": "base.parsing",
    # symbolic engine
    "NeuronIndex": "algebra.symbols",
    "SampleIndex": "algebra.symbols",
    "neuron_indices": "algebra.symbols",
    "sample_indices": "algebra.symbols",
    "Family": "algebra.symbols",
    "gaussian_field": "algebra.symbols",
    "nearly_gaussian_field": "algebra.symbols",
    "bias": "algebra.symbols",
    "weight": "algebra.symbols",
    "tensor": "algebra.symbols",
    "NeuronSum": "algebra.symbols",
    "GaussianAverage": "algebra.symbols",
    "DerivativeContraction": "algebra.symbols",
    "simplify_sums": "algebra.contractions",
    "wick": "algebra.contractions",
    "E": "algebra.contractions",
    "Trace": "algebra.trace",
    "split_sum": "algebra.contractions",
    "cumulant": "algebra.cumulants",
    "moment_from_cumulants": "algebra.cumulants",
    "nearly_gaussian_expectation": "algebra.nearly_gaussian",
    "perturbative_expectation": "algebra.nearly_gaussian",
    "evaluate_averages": "algebra.nearly_gaussian",
    "integrate_by_parts": "algebra.nearly_gaussian",
    "collapse_contractions": "algebra.nearly_gaussian",
    "Graded": "algebra.graded",
    # activations and numeric Gaussian expectations
    "Activation": "activations.catalogue",
    "activation": "activations.catalogue",
    "known_activations": "activations.catalogue",
    "gaussian_expectation": "activations.gaussian",
    "GaussianValue": "activations.gaussian",
    # networks
    "MLP": "architectures.mlp",
    "ResMLP": "architectures.residual",
    "Network": "architectures.network",
    "derive": "derivation.derivation",
    "Derivation": "derivation.derivation",
    "predict": "numeric.prediction",
    "train": "numeric.training",
    "criticality": "activations.criticality",
    "Criticality": "activations.criticality",
    "critical_gamma": "activations.criticality",
    "ntk_criticality": "numeric.ntk_criticality",
    "NTKCriticality": "numeric.ntk_criticality",
    "check": "reality.check",
    "Check": "reality.check",
    "check_train": "reality.check_train",
    "TrainCheck": "reality.check_train",
    "Prediction": "numeric.prediction",
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
