"""Per-task records of a long evaluation, kept as they finish, so a stopped run resumes.

A HumanEval run here takes from minutes to hours (all 326 multi-line tasks with the parent's
rerank: about 2.5 h on two cores), longer than a terminal or a session may last. Each record is
appended to ``<out>.partial`` and flushed when its task finishes; ``--resume`` reuses them and
runs only the tasks missing. The file's first line is the run's key (the task set, the model's
weights and every setting), and a key that differs is refused: records of two configurations
must never be mixed into one score. When every task is done the records are written to ``out``
in task order and the partial file is removed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from engine.errors import ConfigError


def weights_digest(folder: Path) -> str:
    """A digest of the model folder's own weight files (an adapter's, not its pinned base's):
    a model retrained in place is another model."""
    h = hashlib.sha256()
    for path in sorted(Path(folder).glob("*.safetensors")):
        h.update(path.name.encode())
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


class Journal:
    """``done``: the records kept from a stopped run of the same key (empty without
    ``resume``); ``add`` keeps one more."""

    def __init__(self, out: Path, key: dict, resume: bool) -> None:
        self.out = Path(out)
        self.partial = self.out.with_name(self.out.name + ".partial")
        self.key = json.loads(json.dumps(key, default=str))  # as it reads back from the file
        self.done: dict[str, dict] = {}
        if resume and self.partial.exists():
            self.done = self._read()
        # the key and the records kept, anew: a line cut by a kill must not swallow the next
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        self._write(self.partial, [{"key": self.key}, *self.done.values()])

    def _read(self) -> dict[str, dict]:
        lines = self.partial.read_text().splitlines()
        try:
            head = json.loads(lines[0])["key"] if lines else None
        except (json.JSONDecodeError, KeyError, TypeError):
            head = None
        if head != self.key:
            raise ConfigError(f"{self.partial} holds records of another run (other model, tasks "
                              "or settings); rerun with that run's flags, or without --resume "
                              "to start again")
        done = {}
        for line in lines[1:]:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # the line being written when the run was killed
                continue
            done[record["task_id"]] = record
        return done

    def add(self, record: dict) -> None:
        with self.partial.open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def finish(self, records: list[dict]) -> None:
        """Every task's record, in task order, to ``out``; the partial file goes."""
        self._write(self.out, records)
        self.partial.unlink(missing_ok=True)

    @staticmethod
    def _write(path: Path, rows: list[dict]) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        os.replace(tmp, path)
