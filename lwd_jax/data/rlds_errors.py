"""The error raised for bad RLDS input: which dataset, which episode, which field, what is wrong.

Why a structured subclass of SchemaError: callers that already catch SchemaError (gRPC ingest, tests)
keep working, while the reader's skip mode can report each bad episode with its coordinates as data
(attributes), not only as text.
"""

from __future__ import annotations

from fleet_api.schema import SchemaError


class RLDSReadError(SchemaError):
    """A dataset-level problem (bad key map, missing field in the features) or a bad episode record."""

    def __init__(
        self,
        dataset: str,
        problem: str,
        *,
        field: str | None = None,
        episode_index: int | None = None,
        episode_id: str | None = None,
        shard: str | None = None,
        record: int | None = None,
    ):
        self.dataset = dataset
        self.problem = problem
        self.field = field
        self.episode_index = episode_index
        self.episode_id = episode_id
        self.shard = shard
        self.record = record
        super().__init__(self._message())

    def _message(self) -> str:
        if self.episode_index is None:
            where = "every episode"
        else:
            where = f"episode #{self.episode_index} (id {self.episode_id or 'unknown'}"
            if self.shard is not None:
                where += f", shard {self.shard} record {self.record}"
            where += ")"
        what = f"field '{self.field}' " if self.field else ""
        return f"RLDS dataset '{self.dataset}': {where}: {what}{self.problem}"
