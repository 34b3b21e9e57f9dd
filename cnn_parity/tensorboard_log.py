"""TensorBoard event files in a run's workdir, the same for both frameworks, so that
`tensorboard --logdir runs/` overlays Flax and PyTorch runs. Written with tensorboardX's summaries
and its synchronous event writer (no TensorFlow, no TensorBoard server; synchronous, so that what a
checkpoint keeps is on disk when it is written, which tensorboardX's queued SummaryWriter does not
promise).

Every scalar is on the global-step axis: each epoch record of metrics.jsonl is an event at the step
that ends the epoch, holding `SCALAR_TAGS`; each step record of steps.jsonl one at its step, holding
`STEP_SCALAR_TAGS`; the run's recipe is the text summary `RECIPE_TAG` at step 0 (and again where a
resume changed it, at the resume's first step). Each process that
trains the run opens its own event file and marks its start (a SessionLog START, tensorboardX's
`purge_step`) at one past the step it resumes from: TensorBoard's readers then drop the earlier files'
events from that step on, the ones the resumed run trains and logs again, so no point is repeated or lost.
"""

from __future__ import annotations

import itertools
import json
import os
import time
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
    """The run's event file from global step `steps` on (0: a new run, which also logs its recipe)."""

    def __init__(self, folder: str | os.PathLike, recipe: dict[str, Any], steps: int):
        from tensorboardX import summary  # only runs that log to TensorBoard load it
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto import event_pb2, summary_pb2

        self._event, self._summary, self._summary_proto = event_pb2, summary, summary_pb2
        fresh = not any(Path(folder).glob(f"events.out.{EVENT_FILE_MARK}.*"))
        self.writer = EventsWriter(str(Path(folder) / "events"), filename_suffix=f".{os.getpid()}.{next(_writers)}")
        # Every writer marks its start; TensorBoard takes the first mark as the run's start and purges at
        # each later one, so the first writer marks it too.
        first = 0 if fresh else steps + 1
        start = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
        self.writer.write_event(event_pb2.Event(wall_time=time.time(), step=first, session_log=start))
        # The recipe in effect from here (a resume may have lengthened it). Indented: TensorBoard renders
        # text summaries as Markdown, and this keeps the JSON as it is.
        text = "\n".join("    " + line for line in json.dumps(recipe, indent=2).splitlines())
        self.writer.write_event(event_pb2.Event(wall_time=time.time(), step=first, summary=summary.text(RECIPE_TAG, text)))
        self.flush()

    def epoch(self, record: dict[str, Any]) -> None:
        self._scalars(record["steps"], SCALAR_TAGS, record)
        self.flush()

    def steps(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            self._scalars(record["step"], STEP_SCALAR_TAGS, record)

    def _scalars(self, step: int, tags: dict[str, str], record: dict[str, Any]) -> None:
        values = [self._summary.scalar(tag, record[key]).value[0] for tag, key in tags.items()]
        self.writer.write_event(self._event.Event(wall_time=time.time(), step=step,
                                                  summary=self._summary_proto.Summary(value=values)))

    def flush(self) -> None:
        """Everything logged so far on disk (at each epoch and checkpoint: what a resume keeps is there)."""
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
