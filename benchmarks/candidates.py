"""The benchmark candidates: one (model, pipeline) each, built from the project's own trainers.

Every candidate exposes the same small interface the worker times:
  steps_per_epoch, batch_size, device
  train(epoch, steps) -> examples   runs `steps` training steps of epoch `epoch`, fully synchronised
  evaluate() -> examples            the whole test split, as the trainers' `evaluate()` does it
Training goes through the trainers' own `train_epoch` with the shared `EpochLog` (losses read back
every 50 steps, as in a real run), so the numbers describe the product, not a stripped-down loop.
"""

from __future__ import annotations

FLAX_PIPELINES = ("jit-loop", "jit-scan", "gemm-loop", "gemm-scan")
TORCH_PIPELINES = ("eager", "compile", "seed-dataloader")
PIPELINES = FLAX_PIPELINES + TORCH_PIPELINES


def framework_of(pipeline: str) -> str:
    return "flax" if pipeline in FLAX_PIPELINES else "torch"


class _NullProgress:
    """Stands in for tqdm inside EpochLog: no terminal output during timing."""

    def update(self, n=1):
        pass

    def set_postfix(self, *args, **kwargs):
        pass


class _Candidate:
    def __init__(self, trainer, sync):
        self.trainer = trainer
        self._sync = sync
        self.steps_per_epoch = trainer.steps_per_epoch
        self.batch_size = trainer.recipe.batch_size
        self.device = trainer.device
        self.num_params = trainer.num_params

    def train(self, epoch: int, steps: int) -> int:
        from cnn_parity.training import EpochLog

        log = EpochLog(1, _NullProgress())
        self.trainer.train_epoch(epoch, steps, log)
        log.flush()
        self._sync()
        return log.examples

    def evaluate(self) -> int:
        return self.trainer.evaluate().examples


def build(model: str, pipeline: str, data_dir: str | None) -> _Candidate:
    from cnn_parity.recipes import load_recipe

    recipe = load_recipe(model)
    if framework_of(pipeline) == "flax":
        import jax

        from benchmarks import flax_variants

        trainer = flax_variants.make_trainer(pipeline, recipe, data_dir)
        return _Candidate(trainer, lambda: jax.block_until_ready(trainer.state))

    import torch

    from torch_ref.train import TorchTrainer

    trainer = TorchTrainer(recipe, "seed" if pipeline == "seed-dataloader" else "tensor", data_dir)
    if pipeline == "compile":
        # The model's forward (and, through AOTAutograd, its backward) compiled by Inductor; the data
        # pipeline and the optimiser step are the eager trainer's. Parameters are shared, so the
        # trainer's optimiser updates the compiled module's weights.
        trainer.model = torch.compile(trainer.model)
    sync = torch.cuda.synchronize if trainer.torch_device.type == "cuda" else (lambda: None)
    return _Candidate(trainer, sync)
