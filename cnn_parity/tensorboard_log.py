"""TensorBoard event files in a run's workdir, the same for both frameworks, so that
`tensorboard --logdir runs/` overlays Flax and PyTorch runs.

Written with the `tensorboard` package's TensorFlow-free pieces (summary protos, the text plugin's
summary builder, its record framing), never TensorFlow. Each epoch record of metrics.jsonl becomes one
event at step = epoch, holding the scalars in `SCALAR_TAGS`; each step record of steps.jsonl one event
at step = the global step, holding those in `STEP_SCALAR_TAGS`; the run's recipe is the text summary
`RECIPE_TAG` at step 0. Scalars are classic `simple_value` summaries, which every reader lists as
scalars (TensorBoard, `EventAccumulator(...).Tags()["scalars"]`, pandas-style exporters).

The events mirror metrics.jsonl and steps.jsonl exactly: where the records are replaced (a resumed run
takes those of its checkpoint; an epoch that an earlier --max-steps cut short goes on), the event file
is rewritten from them, so a resumed run neither repeats a point nor loses one. Between rewrites each
record is appended and flushed as it is logged.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.text.summary_v2 import text_pb
from tensorboard.summary.writer.record_writer import RecordWriter

from cnn_parity.files import write_bytes_atomic

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
EVENT_FILE_MARK = "tfevents"  # what TensorBoard looks for in a file name
_STAGING = "tensorboard-events-partial"
_file_numbers = itertools.count()  # later rewrites sort after earlier ones, even within one second


class EventLog:
    """The event file of the run in `folder`; created holding the recipe, the epoch `records` and the
    `step_records`."""

    def __init__(self, folder: str | os.PathLike, recipe: dict[str, Any], records: list[dict[str, Any]],
                 step_records: list[dict[str, Any]]):
        self.folder = Path(folder)
        self.recipe = recipe
        self.path: Path | None = None
        self.rewrite(records, step_records)

    def rewrite(self, records: list[dict[str, Any]], step_records: list[dict[str, Any]]) -> None:
        """Replace the run's event files by one holding the recipe and exactly these records."""
        header = event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2")
        events = [header, self._recipe_event(), *map(_step_event, step_records), *map(_epoch_event, records)]
        content = b"".join(map(_framed, events))
        path = self.folder / (f"events.out.{EVENT_FILE_MARK}.{int(time.time()):010d}.{socket.gethostname()}."
                              f"{os.getpid()}.{next(_file_numbers)}")
        for stale in self.folder.glob(f".*{_STAGING}*"):  # left by a killed process
            stale.unlink(missing_ok=True)
        # Assembled under a name TensorBoard ignores, then renamed: it never reads a partial file.
        staging = self.folder / f".{_STAGING}-{os.getpid()}"
        write_bytes_atomic(staging, content)
        os.replace(staging, path)
        for old in self.folder.glob(f"events.out.{EVENT_FILE_MARK}.*"):
            if old != path:
                old.unlink(missing_ok=True)
        self.path = path

    def append(self, record: dict[str, Any]) -> None:
        with open(self.path, "ab") as f:
            f.write(_framed(_epoch_event(record)))

    def append_steps(self, step_records: list[dict[str, Any]]) -> None:
        with open(self.path, "ab") as f:
            f.write(b"".join(_framed(_step_event(record)) for record in step_records))

    def _recipe_event(self):
        # Indented: TensorBoard renders text summaries as Markdown, and this keeps the JSON as it is.
        text = "\n".join("    " + line for line in json.dumps(self.recipe, indent=2).splitlines())
        return event_pb2.Event(wall_time=time.time(), step=0, summary=text_pb(RECIPE_TAG, text))


def _scalars_event(step: int, tags: dict[str, str], record: dict[str, Any]):
    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=record[key])
                                         for tag, key in tags.items()])
    return event_pb2.Event(wall_time=time.time(), step=step, summary=summary)


def _epoch_event(record: dict[str, Any]):
    return _scalars_event(record["epoch"], SCALAR_TAGS, record)


def _step_event(record: dict[str, Any]):
    return _scalars_event(record["step"], STEP_SCALAR_TAGS, record)


def _framed(event) -> bytes:
    """`event` as one record of an event file (TFRecord framing with its checksums)."""
    buffer = io.BytesIO()
    RecordWriter(buffer).write(event.SerializeToString())
    return buffer.getvalue()
