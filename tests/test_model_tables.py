"""One place per model: a built-in model's facts besides its recipe are its recipe file's [architecture]
and [checks] tables (cnn_parity/specs.py), and every per-model table the code holds is either read
from those or code of its own that must cover every model (each framework's modules, the studies'
plans). A model added, removed or renamed cannot be left out of one."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from cnn_parity.recipes import MODELS, load_recipe
from cnn_parity.specs import spec
from cnn_parity.weights import canonical_shapes
from flax_impl import models as linen_models
from flax_impl import models_nnx
from parity_studies import equivalence
from parity_studies.protocols import FIRST
from torch_ref import models as torch_models

PER_MODEL = {
    "flax_impl.models.MODULES": linen_models.MODULES,
    "flax_impl.models_nnx.MODULES": models_nnx.MODULES,
    "torch_ref.models.MODULES": torch_models.MODULES,
    "parity_studies.equivalence.PILOT_EPOCHS": equivalence.PILOT_EPOCHS,
    "parity_studies.protocols.FIRST.models": FIRST.models,
}


@pytest.mark.parametrize("name", PER_MODEL)
def test_a_per_model_table_of_code_names_every_model(name):
    assert set(PER_MODEL[name]) == set(MODELS)


@pytest.mark.parametrize("model", MODELS)
def test_every_models_file_holds_its_facts_and_they_agree_with_its_recipe(model):
    facts = spec(model)
    assert facts.layers[-1].outputs == 10 and facts.learning_steps > 0 and facts.benchmark_steps > 0
    assert {"steps", "bound", "floor"} == set(facts.parity_accuracy) and facts.deviation
    assert set(facts.explicit_init) <= {layer.name for layer in facts.layers}
    assert sum(math.prod(s) for s in canonical_shapes(model).values()) == load_recipe(model).reported["num_params"]


def test_the_readmes_table_of_models_is_the_one_their_recipe_files_give():
    """The README's models table is generated (python -m parity_tests.docs models --update-readme
    README.md), never typed: a recipe changed without regenerating it fails here."""
    from parity_tests import docs

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = readme.split(f"<!-- {docs.MODELS_MARKER}:begin -->\n")[1].split(f"\n<!-- {docs.MODELS_MARKER}:end -->")[0]
    assert block == docs.models_table()
