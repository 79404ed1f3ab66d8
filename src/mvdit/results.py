"""What a stage returns: the record it wrote (JSON-able) and how that reads on a terminal.

Every stage function the CLI calls returns a `Result`; the command prints `str(result)`. The
record stays readable as a mapping (`result["params"]`), so a study or the recipe reads the same
numbers the stage wrote to disk."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Result(Mapping[str, Any]):
    record: Mapping[str, Any]  # the numbers, as written to the stage's JSON
    render: Callable[[Mapping[str, Any]], str] = field(repr=False, compare=False)
    out: Path | None = None  # the file or directory written (None: nothing written)

    def __str__(self) -> str:
        return self.render(self.record)

    def __getitem__(self, key: str) -> Any:
        return self.record[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.record)

    def __len__(self) -> int:
        return len(self.record)
