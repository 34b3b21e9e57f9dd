"""Tables keyed by model name beside recipes.MODELS: each per-model table holds a fact of its own for
every model, so it names exactly the models of MODELS; a table of exceptions names only models of it.
A model added, removed or renamed cannot be left out of one."""

from __future__ import annotations

import pytest

from benchmarks import run as benchmarks_run
from cnn_parity import weights
from cnn_parity.recipes import MODELS
from flax_impl import models as linen_models
from flax_impl import models_nnx
from parity_studies import equivalence, reproduction_report
from parity_studies.protocols import FIRST
from parity_tests import bounds
from torch_ref import models as torch_models

from . import helpers

PER_MODEL = {
    "cnn_parity.weights.LAYERS": weights.LAYERS,
    "cnn_parity.weights.CONV_GEOMETRY": weights.CONV_GEOMETRY,
    "cnn_parity.weights.FLATTENED_INPUT": weights.FLATTENED_INPUT,
    "parity_studies.equivalence.PILOT_EPOCHS": equivalence.PILOT_EPOCHS,
    "parity_studies.protocols.FIRST.models": FIRST.models,
    "parity_studies.reproduction_report.DEVIATIONS": reproduction_report.DEVIATIONS,
    "flax_impl.models.MODULES": linen_models.MODULES,
    "flax_impl.models_nnx.MODULES": models_nnx.MODULES,
    "torch_ref.models.MODULES": torch_models.MODULES,
    "benchmarks.run.FULL_STEPS": benchmarks_run.FULL_STEPS,
    "parity_tests.bounds.ACCURACY": bounds.ACCURACY,
    "tests.helpers.LEARNING_STEPS": helpers.LEARNING_STEPS,
    "tests.helpers.MIN_TEST_ACCURACY": helpers.MIN_TEST_ACCURACY,
}
EXCEPTIONS = {
    "cnn_parity.weights.EXPLICIT_WEIGHT_INITS": weights.EXPLICIT_WEIGHT_INITS,
}


@pytest.mark.parametrize("name", PER_MODEL)
def test_a_per_model_table_names_every_model(name):
    assert set(PER_MODEL[name]) == set(MODELS)


@pytest.mark.parametrize("name", EXCEPTIONS)
def test_a_table_of_exceptions_names_only_models(name):
    assert set(EXCEPTIONS[name]) <= set(MODELS)
