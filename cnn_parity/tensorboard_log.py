"""TensorBoard event files in a run's workdir, the same for both frameworks, so that
`tensorboard --logdir runs/` overlays Flax and PyTorch runs. Written with tensorboardX (no TensorFlow,
no TensorBoard server needed to write).

Every scalar is on the global-step axis: each epoch record of metrics.jsonl is an event at the step
that ends the epoch, holding `SCALAR_TAGS`; each step record of steps.jsonl one at its step, holding
`STEP_SCALAR_TAGS`; the run's recipe is the text summary `RECIPE_TAG` at step 0. A resumed run opens
a new event file with `purge_step` one past its checkpoint's step: TensorBoard then drops the earlier
files' events from that step on, the ones the resumed run trains again, so no point is repeated or lost.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any

# TensorBoard tag → the epoch record's key.
SCALAR_TAGS = {
    "train/loss": "train_loss",
    "train/accuracy": "train_accuracy",
    "test/loss": "test_loss",
    "test/accuracy": "test_accuracy",
}
# TensorBoard tag → the step record's key (steps.jsonl, every --log-every steps).
STEP_SCALAR_TAGS = {
    "train/step_loss": "loss",
    "train/learning_rate": "learning_rate",
}
RECIPE_TAG = "recipe"
RECIPE_EVENT_TAG = f"{RECIPE_TAG}/text_summary"  # the tag tensorboardX gives that text summary
EVENT_FILE_MARK = "tfevents"  # what TensorBoard looks for in a file name
_writers = itertools.count()  # two writers of one process in one second get distinct files


class EventLog:
    """The run's event writer from global step `steps` on (0: a new run, which also logs its recipe)."""

    def __init__(self, folder: str | os.PathLike, recipe: dict[str, Any], steps: int):
        from tensorboardX import SummaryWriter  # only runs that log to TensorBoard load it

        fresh = not any(Path(folder).glob(f"events.out.{EVENT_FILE_MARK}.*"))
        # Every writer marks its session's start (purge_step): TensorBoard's readers take the first mark
        # as the run's start and purge at each later one, so the first writer must mark it too.
        self.writer = SummaryWriter(str(folder), purge_step=0 if fresh else steps + 1, flush_secs=30,
                                    filename_suffix=f".{os.getpid()}.{next(_writers)}")
        if fresh:
            # Indented: TensorBoard renders text summaries as Markdown, and this keeps the JSON as it is.
            self.writer.add_text(RECIPE_TAG, "\n".join("    " + line for line in json.dumps(recipe, indent=2).splitlines()), 0)

    def epoch(self, record: dict[str, Any]) -> None:
        self._scalars(record["steps"], SCALAR_TAGS, record)
        self.flush()

    def steps(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            self._scalars(record["step"], STEP_SCALAR_TAGS, record)

    def _scalars(self, step: int, tags: dict[str, str], record: dict[str, Any]) -> None:
        for tag, key in tags.items():
            self.writer.add_scalar(tag, record[key], step)

    def flush(self) -> None:
        """Everything logged so far on disk (at each epoch and checkpoint: what a resume keeps is there)."""
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
