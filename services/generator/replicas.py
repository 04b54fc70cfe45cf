"""Generator replicas: which are alive and where, and which one runs each generation job, so
that CancelGeneration reaches a job from any replica.

Generation jobs live in the memory of the replica that runs them (job_queue.py). Every replica
registers in the metadata store (table `generator_replicas`: a replica id made at start, the
address the others reach it at, a heartbeat every HEARTBEAT_SECONDS) and records each job it
accepts (table `generator_job_routes`: job id -> replica id). A job id cannot carry its replica:
callers may choose job ids, so the route is a row, written before the job is queued (a client
learns a job id from its stream's first event, by then the route is there).

CancelGeneration on a replica that does not know the job looks up the route:
- no route: nobody knows the job; answered locally as always (cancelled=false, and the id is
  remembered for a Generate that arrives later with it);
- the owner is alive (a heartbeat within STALE_SECONDS, about three missed): the call is
  forwarded to its address, with this service's api key and the FORWARDED_HEADER (a forwarded
  call is answered where it lands and never forwarded again), and the owner's answer (or error)
  is the answer;
- the owner is gone (no heartbeat for STALE_SECONDS, or it stopped and deregistered): its jobs
  ended with it: FAILED_PRECONDITION, reason JOB_REPLICA_GONE (the id is known, so not
  NOT_FOUND; nothing is left to cancel, and retrying will not change that).

Heartbeats compare clocks of different hosts: keep them in sync (NTP) well within
STALE_SECONDS. Routes and dead replicas are pruned after KEEP_SECONDS.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import grpc
import sqlalchemy as sa
from grpc import aio
from sqlalchemy.engine import Engine

from boothstudio.shared import metadata_store as store
from boothstudio.shared.channels import aio_channel
from boothstudio.shared.config import ServiceConfig
from boothstudio.shared.errors import (
    BoothStudioError,
    FailedPrecondition,
    Unavailable,
    exception_from_rpc_error,
)
from boothstudio.shared.ids import new_id
from boothstudio.v1 import generator_pb2, generator_pb2_grpc

HEARTBEAT_SECONDS = 5.0
#: a replica missing about three heartbeats is taken for gone
STALE_SECONDS = 3 * HEARTBEAT_SECONDS + 1.0
#: routes, and replicas without a heartbeat, older than this are deleted
KEEP_SECONDS = 24 * 3600.0
PRUNE_EVERY_SECONDS = 600.0
FORWARD_TIMEOUT_S = 10.0
#: metadata of a forwarded call (its value: the forwarding replica's id)
FORWARDED_HEADER = "x-boothstudio-forwarded-from"

# The tables as the code reads them (the schema is migrations/ 0003's business).
metadata = sa.MetaData()
replicas = sa.Table(
    "generator_replicas",
    metadata,
    sa.Column("replica_id", sa.Text(), primary_key=True),
    sa.Column("address", sa.Text()),
    sa.Column("heartbeat", sa.Float()),
)
job_routes = sa.Table(
    "generator_job_routes",
    metadata,
    sa.Column("job_id", sa.Text(), primary_key=True),
    sa.Column("replica_id", sa.Text()),
    sa.Column("created", sa.Float()),
)


def advertised_address(configured: str, host: str, port: int) -> str:
    """Where the other replicas reach this one: `advertise_address`, else host:port (this
    machine's name for a wildcard host)."""
    if configured:
        return configured
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = socket.gethostname()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class Owner:
    """The replica recorded for a job."""

    replica_id: str
    address: str  # "" when the replica deregistered
    alive: bool


class ReplicaRegistry:
    """This replica's row and the job routes (blocking calls: run them in a thread)."""

    def __init__(self, engine: Engine, address: str) -> None:
        self.engine = engine
        self.address = address
        self.replica_id = new_id("r")
        self._pruned = 0.0

    def heartbeat(self) -> None:
        """Register, or say this replica is still alive; now and then prune old rows."""
        now = time.time()
        with store.writing(self.engine) as conn:
            beat = replicas.update().where(replicas.c.replica_id == self.replica_id)
            if conn.execute(beat.values(heartbeat=now, address=self.address)).rowcount == 0:
                conn.execute(
                    replicas.insert().values(
                        replica_id=self.replica_id, address=self.address, heartbeat=now
                    )
                )
        if now - self._pruned >= PRUNE_EVERY_SECONDS:
            self._pruned = now
            with store.writing(self.engine) as conn:
                conn.execute(job_routes.delete().where(job_routes.c.created < now - KEEP_SECONDS))
                conn.execute(replicas.delete().where(replicas.c.heartbeat < now - KEEP_SECONDS))

    def deregister(self) -> None:
        """At stop: this replica's jobs are gone with it from now on."""
        with store.writing(self.engine) as conn:
            conn.execute(replicas.delete().where(replicas.c.replica_id == self.replica_id))

    def record_job(self, job_id: str) -> None:
        """This replica runs `job_id` (a reused id moves to the newest job)."""
        with store.writing(self.engine) as conn:
            conn.execute(job_routes.delete().where(job_routes.c.job_id == job_id))
            conn.execute(
                job_routes.insert().values(
                    job_id=job_id, replica_id=self.replica_id, created=time.time()
                )
            )

    def owner_of(self, job_id: str) -> Owner | None:
        """The replica recorded for `job_id` (None when no replica recorded it)."""
        query = (
            sa.select(job_routes.c.replica_id, replicas.c.address, replicas.c.heartbeat)
            .select_from(
                job_routes.outerjoin(replicas, replicas.c.replica_id == job_routes.c.replica_id)
            )
            .where(job_routes.c.job_id == job_id)
        )
        with store.reading(self.engine) as conn:
            row = conn.execute(query).mappings().first()
        if row is None:
            return None
        beat = row["heartbeat"]
        alive = beat is not None and beat >= time.time() - STALE_SECONDS
        return Owner(row["replica_id"], row["address"] or "", alive)

    async def keep_alive(self, log: logging.Logger) -> None:
        """The heartbeat task: registers at once, then beats every HEARTBEAT_SECONDS. A
        database that is down is logged and tried again at the next beat."""
        while True:
            try:
                await asyncio.to_thread(self.heartbeat)
            except BoothStudioError as err:
                log.warning("replica heartbeat failed: %s", err)
            await asyncio.sleep(HEARTBEAT_SECONDS)


class Forwarder:
    """Calls to other replicas: one channel per address, carrying the service api key."""

    def __init__(self, config: ServiceConfig, replica_id: str) -> None:
        self.config = config
        self.replica_id = replica_id
        self.channels: dict[str, aio.Channel] = {}

    def _stub(self, address: str) -> generator_pb2_grpc.GeneratorServiceStub:
        channel = self.channels.get(address)
        if channel is None:
            cfg = self.config
            channel = self.channels[address] = aio_channel(
                address,
                api_key=cfg.service_api_key or None,
                root_ca=cfg.root_ca,
                max_message_bytes=cfg.max_message_bytes,
            )
        return generator_pb2_grpc.GeneratorServiceStub(channel)

    async def cancel(
        self, owner: Owner, job_id: str
    ) -> generator_pb2.CancelGenerationResponse:
        """The owner's answer to CancelGeneration(job_id), its errors re-raised as they came."""
        if not owner.alive:
            raise FailedPrecondition(
                f"job {job_id!r} ran on generator replica {owner.replica_id}, which is gone "
                "(stopped, or no heartbeat): the job ended with it",
                reason="JOB_REPLICA_GONE",
                metadata={"job_id": job_id, "replica_id": owner.replica_id},
            )
        try:
            return await self._stub(owner.address).CancelGeneration(
                generator_pb2.CancelGenerationRequest(job_id=job_id),
                metadata=((FORWARDED_HEADER, self.replica_id),),
                timeout=FORWARD_TIMEOUT_S,
            )
        except grpc.RpcError as err:
            if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise Unavailable(
                    f"generator replica {owner.replica_id} running job {job_id!r} cannot be "
                    f"reached at {owner.address}",
                    reason="REPLICA_UNAVAILABLE",
                    retry_after=HEARTBEAT_SECONDS,
                    metadata={"job_id": job_id, "replica_id": owner.replica_id},
                ) from err
            raise exception_from_rpc_error(err) from err

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close()
        self.channels.clear()


def is_forwarded(invocation_metadata: Iterable[tuple[str, Any]] | None) -> bool:
    """Whether a call came from another replica (answer it here, never forward it again)."""
    return any(key == FORWARDED_HEADER for key, _ in invocation_metadata or ())
