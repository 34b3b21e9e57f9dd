"""Generated tables inside hand-written Markdown: a block between `<!-- NAME:begin -->` and
`<!-- NAME:end -->` is replaced by a report's output, so quoted figures are regenerated, not typed."""

from __future__ import annotations

from pathlib import Path

from cnn_parity.errors import UsageError


def replace_marked_block(path: str | Path, name: str, text: str) -> None:
    path = Path(path)
    begin_marker, end_marker = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    try:
        content = path.read_text()
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}") from None
    begin, end = content.find(begin_marker), content.find(end_marker)
    if begin < 0 or end < begin:
        raise UsageError(f"{path} has no '{begin_marker}' ... '{end_marker}' block to replace")
    path.write_text(content[:begin + len(begin_marker)] + "\n" + text.rstrip("\n") + "\n" + content[end:])
