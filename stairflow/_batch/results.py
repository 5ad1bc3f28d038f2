"""A batch's results file: one JSON line per finished prompt and mode, appended as it finishes.

The guarantees, and how they hold:

- **Whole lines.** Each line is written with one ``write`` to a file opened for appending,
  with no buffer of ours in between; a line is counted done only once that returns. A kill can
  interrupt only the write in progress (the kernel may cut one longer than a page); that torn
  tail was never counted done, and opening the file again cuts it off.
- **No duplicates.** One process writes the file (Ray workers send their results back to it),
  it holds an exclusive lock on it while it does (a second batch on the same file is
  refused), and it writes a (prompt, mode) only if no line of the file holds it yet.
- **Resumable.** Opening the file reads the (id, mode) pairs it holds; the batch skips them.
- **Nothing else touched.** A file that is not a batch's results (or is another graph's) is
  refused before a byte of it changes; the file is created only once the prompts are checked.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
from collections.abc import Iterator, Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any

from .._errors import ConfigError
from .prompts import id_key

__all__ = ["ResultsFile"]

Key = tuple[str, str]  # (id_key(id), mode)
_START = b'{"id": '  # how every line this module writes begins


class ResultsFile:
    """The results of one graph's batch: `read` checks what the file holds (changing
    nothing), `begin` locks it, repairs it and opens it for appending."""

    def __init__(self, path: Path, graph: str) -> None:
        self.path = path
        self.graph = graph
        self.done: set[Key] = set()  # every (id, mode) in the file
        self.failed: set[Key] = set()  # of them, those recorded with an error
        self.torn = 0  # bytes of a torn last line, cut off by `begin`
        self._fd: int | None = None

    @classmethod
    def read(cls, path: str | os.PathLike[str], graph: str) -> ResultsFile:
        self = cls(Path(path), graph)
        p = self.path
        if p.is_dir():
            raise ConfigError(f"{p}: is a directory; give a file for the results")
        if not p.exists():
            if p.is_symlink():
                raise ConfigError(f"{p}: a link to nothing; give a file for the results")
            return self
        if not p.is_file():
            raise ConfigError(f"{p}: not a regular file; give a file for the results")
        for _, record in self._lines():
            key = _key(record)
            self.done.add(key)
            if record.get("error") is not None:
                self.failed.add(key)
        return self

    def _not_results(self, n: int) -> ConfigError:
        return ConfigError(f"{self.path}:{n}: not a stairflow batch result; give another file "
                           "for the results")

    def _lines(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """Each result with its line number; checks them all (and a torn last line)."""
        try:
            f = self.path.open("rb")
        except OSError as exc:
            raise ConfigError(f"{self.path}: cannot read it ({exc.strerror}); give a file you "
                              "can read and write") from None
        with f:
            n = 0
            for n, raw in enumerate(f, 1):
                if not raw.endswith(b"\n"):  # the last line, torn by a kill mid-write?
                    if not (raw.startswith(_START) or _START.startswith(raw)):
                        raise self._not_results(n)
                    self.torn = len(raw)
                    break
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw.decode("utf-8"))
                    _key(record)
                except (ValueError, KeyError, TypeError, RecursionError):
                    raise self._not_results(n) from None
                if record.get("graph") != self.graph:
                    raise ConfigError(f"{self.path}:{n}: a result of graph "
                                      f"{record.get('graph')!r}, not {self.graph!r}; write "
                                      "this batch to another file")
                yield n, record

    def begin(self, again: set[Key] | None = None) -> None:
        """Take the file for this batch: lock it (refused if another batch holds it), cut a
        torn last line off, drop the lines of ``again`` (failures to run again), open it for
        appending."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigError(f"{self.path}: cannot write the results there "
                              f"({exc.strerror}); give a file in a directory you can write "
                              "to") from None
        self._fd = fd
        self._lock()
        try:
            if self.torn:
                size = os.fstat(fd).st_size
                os.ftruncate(fd, size - self.torn)
                self.torn = 0
            if again:
                self._drop(again)
        except OSError as exc:
            self.close()
            raise ConfigError(f"{self.path}: cannot rewrite it ({exc.strerror})") from None

    def _lock(self) -> None:
        assert self._fd is not None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.close()
            raise ConfigError(f"{self.path}: another batch is writing these results; wait for "
                              "it, or stop it (a rerun resumes)") from None

    def _drop(self, keys: set[Key]) -> None:
        """Rewrite the file without the lines of ``keys``: through a temporary file beside
        it (the same permissions) renamed over it, so a crash leaves the old file or the
        new one; through a link, the file it points to."""
        real = Path(os.path.realpath(self.path))
        tmp = real.with_name(real.name + ".tmp")
        try:
            with real.open("rb") as src, tmp.open("wb") as out:
                for raw in src:
                    if raw.strip() and _key(json.loads(raw)) in keys:
                        continue
                    out.write(raw)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, stat.S_IMODE(os.stat(real).st_mode))
            os.replace(tmp, real)
        finally:
            with suppress(FileNotFoundError):
                tmp.unlink()
        self.done -= keys
        self.failed -= keys
        old, self._fd = self._fd, None
        if old is not None:
            os.close(old)
        self._fd = os.open(real, os.O_WRONLY | os.O_APPEND)
        self._lock()

    def has(self, id: object, mode: str) -> bool:
        return (id_key(id), mode) in self.done

    def write(self, record: Mapping[str, Any]) -> bool:
        """Append one result as a whole line; False (and nothing written) if the file holds
        its (id, mode) already."""
        key = _key(record)
        if key in self.done:
            return False
        if self._fd is None:
            raise ValueError("the results file is not open for writing")
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        view = memoryview(data)
        while view:  # a regular file takes it in one write; a short write goes on
            view = view[os.write(self._fd, view):]
        self.done.add(key)
        if record.get("error") is not None:
            self.failed.add(key)
        return True

    def close(self) -> None:
        if self._fd is not None:
            with suppress(OSError):  # durable past a power cut too, where the file allows
                os.fsync(self._fd)
            os.close(self._fd)  # and the lock goes with it
            self._fd = None


def _key(record: Mapping[str, Any]) -> Key:
    mode = record["mode"]
    if not isinstance(mode, str):
        raise TypeError("mode")
    return id_key(record["id"]), mode
