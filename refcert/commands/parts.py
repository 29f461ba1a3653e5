"""A stream of finished work items as JSON lines, so an interrupted run loses nothing and ``--resume`` skips
what is done.  One writer (the process that runs the command); the first line is a header with the run's
settings, which a resume must match; every later line is {"key": ..., "result": ...}, appended and flushed
to disk as each item finishes.  A line cut short by a crash is ignored on reading."""
from __future__ import annotations

import json
import os


class Parts:
    def __init__(self, path: str, header: dict):
        self.path, self.header = path, header

    def start(self, resume: bool) -> dict:
        """{key: result} of the items already done (``resume``), else {} after checking no earlier run's
        parts are there; opens the file for appending."""
        done = {}
        if os.path.exists(self.path):
            if not resume:
                raise FileExistsError(f"{self.path} holds the finished items of an earlier, interrupted run: "
                                      f"add --resume to continue it, or delete the file to start again")
            with open(self.path) as stream:
                lines = stream.read().split("\n")
            try:
                header = json.loads(lines[0])
            except ValueError:
                header = None
            if header != self.header:
                raise ValueError(f"{self.path} was written by a run with other settings ({header}); "
                                 f"this run has {self.header}")
            for line in lines[1:]:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # the last line of a run killed mid-write
                done[entry["key"]] = entry["result"]
        elif resume:
            print(f"no parts file {self.path}: starting from the first item")
        self.stream = open(self.path, "a")
        if not done and self.stream.tell() == 0:
            self._write(self.header)
        elif done:
            print(f"resuming: {len(done)} item(s) already done in {self.path}")
        return done

    def add(self, key, result) -> None:
        self._write({"key": key, "result": result})

    def _write(self, obj) -> None:
        self.stream.write(json.dumps(obj) + "\n")
        self.stream.flush()
        os.fsync(self.stream.fileno())

    def finish(self) -> None:
        """Close and remove the stream: the command has written its complete output."""
        self.stream.close()
        os.remove(self.path)
