"""Reporting settings (env prefix REPORTING_; shared ones fall back to DATABASE_URL etc.)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from turnout_kit.settings import ServiceSettings


class ReportingSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="REPORTING_")
    service_database: ClassVar[str | None] = "turnout_reporting"

    http_port: int = 8004

    # Most events folded per transaction. A batch takes what has arrived, up to this: at
    # a demo's pace that is a handful (changes show at once); catching up it is this
    # many, and bigger batches amortise the round trips and the per-row costs (one load,
    # one upsert per table, one commit; the national and group rows once per batch).
    fold_batch_size: int = Field(default=50_000, ge=1, le=200_000)
    # How long a poll waits for more events before folding what it has.
    fold_poll_ms: int = Field(default=200, ge=1, le=10_000)
    # Bytes fetched per partition per request: what can be prefetched while a batch folds.
    fold_fetch_partition_bytes: int = Field(default=4 * 1024 * 1024, ge=64 * 1024,
                                            le=64 * 1024 * 1024)
    # Members whose latest states a fold process keeps in memory, so that their next
    # events need not load them (about 1.1 KB each; 0 loads every member a batch
    # touches). With room for every member of the partitions it folds, a catch-up never
    # loads a state back (10-20% less CPU per event in bench/reporting_fold.py). Each
    # process holds only its partitions' members: a union of a million costs about
    # 1.1 GB in all, however many fold processes share it.
    fold_recent_states: int = Field(default=1_000_000, ge=0, le=10_000_000)
    # Catching up, partitions read ahead of the others by more than this much publish
    # time wait for them, so that a member's events from the three topics are folded
    # together (see Folder.ahead); 0 reads every partition as fast as it comes.
    fold_align_ms: int = Field(default=2000, ge=0, le=3_600_000)
    # Off for an instance that only serves HTTP (the projections are folded elsewhere).
    fold_enabled: bool = True
    # Processes that fold. 1: the service process folds beside serving HTTP. 2 or more:
    # that many child processes fold, sharing the partitions as instances of one
    # consumer group would, and the service process only serves (messaging/processes.py).
    # Catching up is CPU-bound in Python, so one per core the machine can spare (leave
    # PostgreSQL one) folds fastest.
    fold_processes: int = Field(default=1, ge=1, le=32)
