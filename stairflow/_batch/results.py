"""A batch's results file: one JSON line per finished prompt and mode, appended as it finishes.

The guarantees, and how they hold:

- **Whole lines.** Each line is written with one ``write`` to a file opened for appending,
  with no buffer of ours in between; a line is counted done only once that returns. A kill can
  interrupt only the write in progress (the kernel may cut one longer than a page); that torn
  tail was never counted done, and opening the file again cuts it off.
- **No duplicates.** One process writes the file (Ray workers send their results back to it),
  and it writes a (prompt, mode) only if no line of the file holds it yet.
- **Resumable.** Opening the file reads the (id, mode) pairs it holds; the batch skips them.
  A file of another graph is refused, so two batches never mix in one file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any

from .._errors import ConfigError
from .prompts import id_key

__all__ = ["ResultsFile"]

Key = tuple[str, str]  # (id_key(id), mode)


class ResultsFile:
    """The results of one graph's batch; `open` checks and repairs it, then appends."""

    def __init__(self, path: Path, graph: str) -> None:
        self.path = path
        self.graph = graph
        self.done: set[Key] = set()  # every (id, mode) in the file
        self.failed = 0  # of them, lines with an error
        self.repaired = 0  # bytes of a torn last line cut off when opened
        self._fd: int | None = None

    @classmethod
    def open(cls, path: str | os.PathLike[str], graph: str, *, retry_failed: bool = False
             ) -> ResultsFile:
        self = cls(Path(path), graph)
        if self.path.is_dir():
            raise ConfigError(f"{self.path}: is a directory; give a file for the results")
        if self.path.exists():
            self._repair()
            if retry_failed:
                self._drop_failed()
            for n, record in self._lines():
                if record.get("graph") != graph:
                    raise ConfigError(f"{self.path}:{n}: a result of graph "
                                      f"{record.get('graph')!r}, not {graph!r}; write this "
                                      "batch to another file")
                self.done.add(_key(record))
                self.failed += record.get("error") is not None
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigError(f"{self.path}: cannot write the results there ({exc.strerror}); "
                              "give a file in an existing directory") from None
        return self

    def _lines(self) -> Iterator[tuple[int, dict[str, Any]]]:
        with self.path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                try:
                    record = json.loads(line)
                    _key(record)
                except (ValueError, KeyError, TypeError):
                    raise ConfigError(f"{self.path}:{n}: not a stairflow batch result; give "
                                      "another file for the results") from None
                yield n, record

    def _repair(self) -> None:
        """Cut a torn last line (a write a kill interrupted) off the file."""
        with self.path.open("rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            end = size
            while end > 0:  # back to the last newline, a block at a time
                start = max(0, end - 65536)
                f.seek(start)
                block = f.read(end - start)
                cut = block.rfind(b"\n")
                if cut >= 0:
                    end = start + cut + 1
                    break
                end = start
            f.truncate(end)
            self.repaired = size - end

    def _drop_failed(self) -> None:
        """Rewrite the file without its error lines (their prompts run again)."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as out:
            for _, record in self._lines():
                if record.get("error") is None:
                    out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)

    def has(self, id: object, mode: str) -> bool:
        return (id_key(id), mode) in self.done

    def write(self, record: Mapping[str, Any]) -> bool:
        """Append one result as a whole line; False (and nothing written) if the file holds
        its (id, mode) already."""
        key = _key(record)
        if key in self.done:
            return False
        if self._fd is None:
            raise ValueError("the results file is closed")
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        view = memoryview(data)
        while view:  # a regular file takes it in one write; a short write goes on
            view = view[os.write(self._fd, view):]
        self.done.add(key)
        self.failed += record.get("error") is not None
        return True

    def close(self) -> None:
        if self._fd is not None:
            with suppress(OSError):  # durable past a power cut too, where the file allows
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None


def _key(record: Mapping[str, Any]) -> Key:
    mode = record["mode"]
    if not isinstance(mode, str):
        raise TypeError("mode")
    return id_key(record["id"]), mode
