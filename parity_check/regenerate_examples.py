"""Re-run every `$ python -m parity_check ...` example in markdown files and replace its printed
output, so that the worked examples in docs/check-your-own-model.md (and any other page given) are
what the command prints today:

    python -m parity_check.regenerate_examples docs/check-your-own-model.md [OTHER.md ...]

An example is a line starting with `$ python -m parity_check` (continued by trailing
backslashes) inside a fenced block; its output runs to the end of the block. Where the block ends
with an `(exit status N)` line, that line is kept up to date too.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

from cnn_parity.commands import OneLineParser, report_errors
from cnn_parity.errors import UsageError

PROMPT = "$ python -m parity_check"
STATUS = "(exit status "


def run_example(command: str, cwd: Path) -> tuple[list[str], int]:
    """What the example prints (stdout, then its error line if any) and its exit status."""
    argv = [sys.executable, "-m", "parity_check", *shlex.split(command)[3:]]
    result = subprocess.run(argv, capture_output=True, text=True, cwd=cwd)
    errors = [line for line in result.stderr.splitlines() if line.startswith("python -m parity_check: error:")]
    return result.stdout.rstrip("\n").splitlines() + errors, result.returncode


def regenerate(text: str, cwd: Path) -> str:
    lines, out, i = text.split("\n"), [], 0
    while i < len(lines):
        if not lines[i].startswith(PROMPT):
            out.append(lines[i])
            i += 1
            continue
        command = [lines[i]]
        while command[-1].endswith("\\"):
            i += 1
            command.append(lines[i])
        out += command
        i += 1
        end = i
        while end < len(lines) and not lines[end].startswith("```"):
            end += 1
        printed, status = run_example(" ".join(c.rstrip("\\").strip() for c in command)[2:], cwd)
        with_status = end > i and lines[end - 1].startswith(STATUS)
        out += printed + ([f"{STATUS}{status})"] if with_status else [])
        i = end
    return "\n".join(out)


def main(argv=None) -> int:
    parser = OneLineParser(prog="python -m parity_check.regenerate_examples", description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)

    def body() -> int:
        for path in args.files:
            try:
                text = path.read_text()
            except OSError as e:
                raise UsageError(f"cannot read {path}: {e.strerror or e}") from None
            if PROMPT not in text:
                raise UsageError(f"{path} has no `{PROMPT}` example")
            path.write_text(regenerate(text, Path.cwd()))
            print(f"{path}: examples re-run")
        return 0

    return report_errors(parser.prog, body)


if __name__ == "__main__":
    sys.exit(main())
