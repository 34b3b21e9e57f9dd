"""The benchmark candidates: one (model, variant) each, built from the project's own trainers.

A variant is one way to train a recipe in one framework: its step loop, its convolution formulation
or its data pipeline (the training CLIs' `--pipeline` chooses only the last).

Every candidate exposes the same small interface the worker times:
  steps_per_epoch, batch_size, device
  trainer_default                   whether it is what its framework's training CLI runs by default
                                    on this machine (the goals are stated for these)
  train(epoch, steps) -> examples   runs `steps` training steps of epoch `epoch`, fully synchronised
  evaluate() -> examples            the whole test split, as the trainers' `evaluate()` does it
  tiny_step_seconds() -> s | None   one step on a 1-example batch (Flax per-step loops): overhead
Training goes through the trainers' own `train_steps`, driven by the training loop's `run_steps` (losses
read back every `cnn_parity.trainer.CHECK_EVERY` steps, as in a real run), so the numbers describe the
product, not a stripped-down loop.
"""

from __future__ import annotations

FLAX_VARIANTS = ("jit-loop", "jit-scan", "gemm-loop", "gemm-scan", "gemm-chunked", "canonical-chunked",
                 "jaxlib-onednn-chunked", "onednn-chunked", "nnx-jit-loop", "nnx-cached-loop", "nnx-split-loop",
                 "nnx-chunked")
TORCH_VARIANTS = ("eager", "compile", "torchvision-dataloader")
VARIANTS = FLAX_VARIANTS + TORCH_VARIANTS
QUICK_EVAL_EXAMPLES = 1000


def framework_of(variant: str) -> str:
    return "flax" if variant in FLAX_VARIANTS else "torch"


class _Candidate:
    def __init__(self, trainer, sync, trainer_default: bool):
        self.trainer = trainer
        self._sync = sync
        self.trainer_default = trainer_default
        self.steps_per_epoch = trainer.steps_per_epoch
        self.batch_size = trainer.recipe.batch_size
        self.device = trainer.device
        self.num_params = trainer.num_params

    def train(self, epoch: int, steps: int) -> int:
        progress = train_to_step(self.trainer, epoch, steps)
        self._sync()
        return progress.examples_seen

    def evaluate(self) -> int:
        return self.trainer.evaluate().examples

    def tiny_step_seconds(self) -> float | None:
        measure = getattr(self.trainer, "tiny_step_seconds", None)
        return measure() if measure else None

    def limit_eval(self, n: int) -> None:
        """Evaluate on the first `n` test examples only (--quick smoke runs)."""
        t = self.trainer
        if hasattr(t, "test_data"):  # Flax: a DeviceSplit on the device
            t.test_data = type(t.test_data)(*(a[:n] for a in t.test_data))
        elif hasattr(t.test_loader, "images"):  # PyTorch in-memory TensorBatches
            t.test_loader.images, t.test_loader.labels = t.test_loader.images[:n], t.test_loader.labels[:n]
        else:  # PyTorch DataLoader over a torchvision dataset
            from torch.utils.data import DataLoader, Subset
            t.test_loader = DataLoader(Subset(t.test_loader.dataset, range(n)), batch_size=t.test_loader.batch_size)


def train_to_step(trainer, epoch: int, end: int, progress=None):
    """Train epoch `epoch` up to its step `end` (from where `progress` stands; default: the epoch's first
    step) through the training loop's own `cnn_parity.training.train_to`; return where it stands."""
    from cnn_parity import training

    first = (epoch - 1) * trainer.steps_per_epoch
    progress = progress if progress is not None else training.Progress(steps=first)
    return training.train_to(trainer, progress, first + end)


def build(model: str, variant: str, data_dir: str | None, quick: bool = False) -> _Candidate:
    from cnn_parity.recipes import load_recipe

    recipe = load_recipe(model)
    if framework_of(variant) == "flax":
        from benchmarks import flax_variants
        from flax_impl import compilation_cache

        compilation_cache.enable()  # as `python -m flax_impl.train` does ($CNN_PARITY_JAX_CACHE)

        trainer = flax_variants.make_trainer(variant, recipe, data_dir)
        cand = _Candidate(trainer, trainer.sync, flax_variants.is_trainer_default(variant))
    else:
        cand = _build_torch(recipe, variant, data_dir, quick)
    if quick:
        cand.limit_eval(QUICK_EVAL_EXAMPLES)
    return cand


def _build_torch(recipe, variant, data_dir, quick):
    import torch

    from torch_ref.train import TorchTrainer

    trainer = TorchTrainer(recipe, "torchvision" if variant == "torchvision-dataloader" else "tensor", data_dir)
    if variant == "compile":
        # The model's forward (and, through AOTAutograd, its backward) compiled by Inductor; the data
        # pipeline and the optimiser step are the eager trainer's. Parameters are shared, so the
        # trainer's optimiser updates the compiled module's weights.
        # --quick (a CI smoke run) traces through Dynamo and AOTAutograd but skips Inductor's C++ code
        # generation, which alone takes ~30-60 s per model on a 2-core CPU.
        trainer.model = torch.compile(trainer.model, backend="aot_eager" if quick else "inductor")
    sync = torch.cuda.synchronize if trainer.torch_device.type == "cuda" else (lambda: None)
    return _Candidate(trainer, sync, variant == "eager")
