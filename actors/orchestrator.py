"""BatchOrchestrator: the named, detached, restartable actor that runs batches.

It persists every cell of a batch before running any, groups cells by runtime_env, keeps a
pool of VariantExecutionActors per group and hands them chunks of cells. When an actor dies
it is replaced and its chunk given to another with ``takeover``: each interrupted execution
resumes from its last checkpoint. A restarted orchestrator reloads unfinished batches from the
database and takes over the cells its dead actors left running.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any

import ray
from ray.exceptions import RayActorError

from actors.executor_pool import ExecutorPool, ExecutorStartError
from actors.metrics import BatchMetrics
from actors.priority import yield_to_interactive
from actors.restart import open_bench
from wtb_ray.batch.plan import env_key
from wtb_ray.batch.service import BatchService
from wtb_ray.batch.spec import parse_spec
from wtb_ray.config import Settings
from wtb_ray.domain.errors import NotFound
from wtb_ray.latency import Latency

log = logging.getLogger(__name__)
NAMESPACE = "wtb"
MAX_CHUNK_ERRORS = 5
PIPELINE = 2  # chunks in flight per executor
DRIVER_ATTEMPTS = 5  # failures in a row, batch_retry_seconds apart and doubling, before...
STALLED_WAIT = 60  # ...the batch yields its turn; tried again after 60x batch_retry_seconds,
STALLED_MAX_DOUBLINGS = 4  # doubling at each give-up in a row up to 16x that
WAIT_S = 5.0  # a batch waiting for an executor re-reads the database at most this often
SWEEP_S = 5.0  # housekeeping: idle executors stopped, batches nobody drives run
ENV_START_TRIES = 3  # executors of one runtime_env that fail to start before its cells fail
TALLY_S = 0.5  # progress counts are at most this old while chunks run...
TALLY_SHARE = 10  # ...or 10 times the last recount's time: recounts take <= 1/10 of a CPU


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class BatchOrchestrator:
    def __init__(self, settings: dict[str, Any]) -> None:
        yield_to_interactive(settings["batch_niceness"], settings["batch_sched_idle"])
        self.settings = settings
        self.service = BatchService(open_bench(Settings(**settings)))
        self.metrics = BatchMetrics()
        self.pool = ExecutorPool(settings, settings["orchestrator_name"],
                                 settings["executor_idle_seconds"])
        self.drivers: dict[str, asyncio.Task] = {}
        self.turns = asyncio.Semaphore(settings["batch_concurrency"])  # first come, first run
        self.runs: dict[str, _BatchRun] = {}
        # Batches whose driver gave up (the database away for minutes, say): give-ups in a
        # row and when housekeeping tries again (time.monotonic()).
        self.gave_up: dict[str, tuple[int, float]] = {}
        self.latency = {"node": Latency(), "write": Latency()}  # reported by executors
        self.booting: asyncio.Task | None = None
        self.housekeeper: asyncio.Task | None = None
        # Reload unfinished batches as soon as the event loop runs, with no caller needed.
        ray.get_runtime_context().current_actor.boot.remote()

    async def boot(self) -> bool:
        """Drive the batches left unfinished. Every caller waits until they are driven (a
        `wait` queued behind a restart would otherwise find no driver and return at once);
        if reading them failed, the next caller tries again."""
        if self.booting is None or (self.booting.done() and self.booting.exception()):
            self.booting = asyncio.create_task(self._reload())
        await asyncio.shield(self.booting)
        return True

    async def _reload(self) -> None:
        if self.housekeeper is None:
            self.housekeeper = asyncio.create_task(self._housekeeping())
        for batch in await asyncio.to_thread(self.service.batches.unfinished):
            self._schedule(batch.id, takeover=True)

    async def _housekeeping(self) -> None:
        """Every SWEEP_S: stop executors idle too long, pick up batches persisted but never
        handed over (an API replica that died before its schedule call, or whose call
        failed, leaves them pending with no one to drive them), and try again the batches
        whose driver gave up, once their wait is over."""
        while True:
            await asyncio.sleep(SWEEP_S)
            now = time.monotonic()
            for batch_id, (_, retry_at) in list(self.gave_up.items()):
                if retry_at <= now:
                    self._schedule(batch_id, takeover=True)  # its executors were lost
            try:
                self.pool.reap()
                for batch_id in await asyncio.to_thread(self.service.batches.pending_ids):
                    self._schedule(batch_id, takeover=False)
            except Exception:  # the database is away, say: try again next round
                log.exception("orchestrator housekeeping failed; trying again in %s s",
                              SWEEP_S)

    async def schedule(self, *batch_ids: str) -> bool:
        """Run batches someone else persisted (the HTTP API does, to answer at once)."""
        await self.boot()
        for batch_id in batch_ids:
            self._schedule(batch_id, takeover=False)
        return True

    def record_latency(self, report: dict[str, Any]) -> None:
        for kind, snapshot in report.items():
            self.latency[kind].add(snapshot)

    async def latencies(self) -> dict[str, Any]:
        """Node and checkpoint-write latency histograms, as reported so far."""
        return {kind: hist.peek() for kind, hist in self.latency.items()}

    async def executors(self, batch_id: str) -> list[str]:
        """Names of the executors working for a batch now (for people and tests)."""
        run = self.runs.get(batch_id)
        return [self.pool.name(a) for a in run.held] if run else []

    async def stalled(self) -> dict[str, float]:
        """Batches whose driver gave up, with the seconds until it tries again."""
        now = time.monotonic()
        return {b: max(0.0, at - now) for b, (_, at) in self.gave_up.items()
                if b not in self.drivers}

    async def submit(self, spec: dict[str, Any], batch_id: str | None = None) -> str:
        await self.boot()
        batch = await asyncio.to_thread(self.service.submit, parse_spec(spec), batch_id)
        self._schedule(batch.id, takeover=False)
        return batch.id

    async def status(self, batch_id: str) -> dict[str, Any]:
        return await asyncio.to_thread(self.service.progress, batch_id)

    async def cancel(self, batch_id: str) -> dict[str, Any]:
        await asyncio.to_thread(self.service.batches.request_cancel, batch_id)
        return await self.status(batch_id)

    async def wait(self, batch_id: str, timeout_s: float | None = None) -> dict[str, Any]:
        """The batch's progress once it is no longer driven, or after ``timeout_s``.
        ``driving``: a driver runs it now, or will try again (``retry_in_s``) after failing."""
        await self.boot()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while deadline is None or (left := deadline - time.monotonic()) > 0:
            wait_s = None if deadline is None else left
            if (task := self.drivers.get(batch_id)) is not None:
                await asyncio.wait({task}, timeout=wait_s)
            elif batch_id in self.gave_up:  # until housekeeping drives it again
                await asyncio.sleep(SWEEP_S if wait_s is None else min(wait_s, SWEEP_S))
            else:
                break
        # Whether it is driven is settled before its status is read, not after: a driver that
        # ended during the read would otherwise make a status read while it ran look final
        # ("running", not driven), and `wtb demo` returned such a batch.
        retry_in_s = (await self.stalled()).get(batch_id)
        driving = batch_id in self.drivers or retry_in_s is not None
        status = await self.status(batch_id)
        status["driving"] = driving
        status["retry_in_s"] = retry_in_s
        return status

    async def leaderboard(self, batch_id: str) -> list[dict[str, Any]]:
        rows = await asyncio.to_thread(self.service.leaderboard, batch_id)
        return [r.to_dict() for r in rows]

    def _schedule(self, batch_id: str, *, takeover: bool) -> None:
        if batch_id not in self.drivers:
            self.drivers[batch_id] = asyncio.create_task(self._drive(batch_id, takeover))
            self.metrics.set_active(len(self.drivers))

    async def _drive(self, batch_id: str, takeover: bool) -> None:
        try:
            async with self.turns:
                await self._drive_now(batch_id, takeover)
        finally:
            # Only batches being driven (or waiting their turn) stay: a long-lived
            # orchestrator sees batches without end.
            self.drivers.pop(batch_id, None)
            self.metrics.forget(batch_id)
            self.metrics.set_active(len(self.drivers))

    async def _drive_now(self, batch_id: str, takeover: bool) -> None:
        retry_s = self.settings["batch_retry_seconds"]
        try:
            for attempt in range(DRIVER_ATTEMPTS):
                try:
                    self.runs[batch_id] = _BatchRun(self, batch_id)
                    await self.runs[batch_id].run(takeover)
                    self.gave_up.pop(batch_id, None)
                    return
                except NotFound:  # scheduled by id, never persisted: nothing to drive
                    log.error("batch %s does not exist; not driven", batch_id)
                    self.gave_up.pop(batch_id, None)
                    return
                except Exception:
                    log.exception("batch %s: the driver failed (attempt %d of %d)", batch_id,
                                  attempt + 1, DRIVER_ATTEMPTS)
                    if attempt + 1 < DRIVER_ATTEMPTS:
                        await asyncio.sleep(retry_s * 2 ** attempt)
                    takeover = True  # its executors were killed with it
            # It yields its turn (another batch may run) and stays running in the database.
            give_ups = self.gave_up.get(batch_id, (0, 0.0))[0]
            wait = retry_s * STALLED_WAIT * 2 ** min(give_ups, STALLED_MAX_DOUBLINGS)
            self.gave_up[batch_id] = (give_ups + 1, time.monotonic() + wait)
            log.error("batch %s: its driver failed %d times in a row; it stays running and "
                      "is tried again in %.0f s", batch_id, DRIVER_ATTEMPTS, wait)
        finally:
            self.runs.pop(batch_id, None)


class _BatchRun:
    """One batch being driven: the executors it holds and the chunks in flight.

    Each executor gets up to PIPELINE chunks at once: the next one waits inside the actor and
    starts the moment the last ends, so no executor idles while the orchestrator catches up.
    """

    def __init__(self, owner: BatchOrchestrator, batch_id: str) -> None:
        self.owner = owner
        self.service = owner.service
        self.batch_id = batch_id
        self.pool = owner.pool
        self.executors: dict[str, list[Any]] = {}  # held by this batch, per env
        self.load: dict[Any, int] = {}  # chunks in flight per executor
        self.queue: dict[str, deque[tuple[list[str], bool]]] = {}
        self.inflight: dict[asyncio.Future, tuple[str, Any, list[str]]] = {}
        self.errors = 0  # chunk errors in a row that were not an actor dying
        self.next_tally = 0.0  # monotonic time of the next recount while chunks run
        self.start_failures: dict[str, int] = {}  # env -> executors that failed to start
        self.unstartable: dict[str, str] = {}  # env -> why its cells are to be failed

    @property
    def held(self) -> list[Any]:
        return [a for actors in self.executors.values() for a in actors]

    async def run(self, takeover: bool) -> None:
        svc = self.service
        batch = await asyncio.to_thread(lambda: svc.start(svc.batches.get(self.batch_id)))
        spec = svc.spec(batch)
        envs = {env_key(spec.runtime_env_for(c)): spec.runtime_env_for(c)
                for c in spec.choices()}
        try:
            while not batch.finished:
                if await asyncio.to_thread(svc.cancel_requested, batch):
                    await asyncio.to_thread(svc.cancel_rest, batch)
                    self.queue.clear()
                elif not self.inflight and not any(self.queue.values()):
                    todo = await asyncio.to_thread(svc.runnable, batch, takeover=takeover)
                    takeover = False
                    for env in {c["env"] for c in todo}:
                        ids = [c["id"] for c in todo if c["env"] == env]
                        self.queue.setdefault(env, deque()).extend(
                            (ids[i:i + spec.chunk_size], False)
                            for i in range(0, len(ids), spec.chunk_size))
                self._dispatch(envs, spec.parallelism)
                if not self.inflight and any(self.queue.values()):
                    await self._await_executor(envs, spec.parallelism)
                await self._reject_unstartable()
                if self.inflight:
                    await self._collect()
                self._release_idle()
                idle = not self.inflight and not any(self.queue.values())
                if idle or time.monotonic() >= self.next_tally:
                    started = time.monotonic()
                    batch, combinations = await asyncio.to_thread(svc.tally, batch)
                    self.owner.metrics.observe(self.batch_id, combinations)
                    # Recounting reads every cell: on a big batch, not after every chunk.
                    took = time.monotonic() - started
                    self.next_tally = time.monotonic() + max(TALLY_S, TALLY_SHARE * took)
                if idle and not batch.finished and not await asyncio.to_thread(
                        svc.runnable, batch):
                    if not any(c.get("running") for c in combinations.values()):
                        break  # only paused cells are left: they wait for a person
                    # A cell runs under the live lease of another process: an executor of
                    # ours killed a moment ago and still exiting (its cell is taken over
                    # once it is gone), or a person's `wtb resume`. Left now, the batch
                    # would stay running with no one to finish it.
                    await asyncio.sleep(WAIT_S)
            while self.inflight:  # the batch can finish while a chunk's answer is on its way
                await self._collect()
        finally:
            for env, actors in self.executors.items():
                for actor in actors:
                    if self.load.get(actor):
                        self.pool.discard(actor)  # stopped mid-chunk: not fit to be reused
                    else:
                        self.pool.release(env, actor)

    def _dispatch(self, envs: dict[str, dict[str, Any]], parallelism: int) -> None:
        for env, chunks in self.queue.items():
            while chunks and env not in self.unstartable:
                try:
                    actor = self._actor(env, envs.get(env) or {}, parallelism)
                except ExecutorStartError as exc:
                    failures = self.start_failures[env] = self.start_failures.get(env, 0) + 1
                    log.error("batch %s: %s (%d of %d tries)", self.batch_id, exc, failures,
                              ENV_START_TRIES)
                    if failures >= ENV_START_TRIES:  # not transient: its cells cannot run
                        self.unstartable[env] = str(exc)
                    break
                if actor is None:
                    break
                ids, takeover = chunks.popleft()
                ref = actor.run.remote(self.batch_id, ids, takeover)
                self.inflight[asyncio.wrap_future(ref.future())] = (env, actor, ids)
                self.load[actor] = self.load.get(actor, 0) + 1

    def _actor(self, env: str, runtime_env: dict[str, Any], parallelism: int) -> Any:
        """The least loaded executor with room, a new one while under ``parallelism``."""
        actors = self.executors.setdefault(env, [])
        free = [a for a in actors if self.load.get(a, 0) == 0]
        if free:
            return free[0]
        if len(actors) < parallelism:
            actor = self.pool.acquire(env, runtime_env, want=parallelism - len(actors))
            if actor is not None:
                actors.append(actor)
                return actor
        spare = [a for a in actors if self.load.get(a, 0) < PIPELINE]
        return min(spare, key=lambda a: self.load.get(a, 0)) if spare else None

    async def _await_executor(self, envs: dict[str, dict[str, Any]], parallelism: int) -> None:
        """Chunks wait and none runs: wait for the pool to hand out an executor. Waking is
        cheap (no database reads), as every waiting batch wakes whenever the pool changes."""
        deadline = time.monotonic() + WAIT_S
        while not self.inflight and not self.unstartable and (
                left := deadline - time.monotonic()) > 0:
            await self.pool.changed(left)
            self._dispatch(envs, parallelism)

    async def _reject_unstartable(self) -> None:
        """Fail the queued cells of environments whose executors fail to start every time."""
        for env, why in list(self.unstartable.items()):
            ids = [i for chunk, _ in self.queue.pop(env, ()) for i in chunk]
            del self.unstartable[env]
            if ids:
                n = await asyncio.to_thread(self.service.reject, self.batch_id, ids,
                                            "ExecutorStartError", why)
                log.error("batch %s: %d cells failed: %s", self.batch_id, n, why)

    def _release_idle(self) -> None:
        """Give back the idle executors of groups with nothing queued: another group may be
        waiting for their CPUs (the pool frees them when it is)."""
        for env, actors in self.executors.items():
            if self.queue.get(env):
                continue
            for actor in [a for a in actors if not self.load.get(a)]:
                actors.remove(actor)
                self.load.pop(actor, None)
                self.pool.release(env, actor)

    def _lose(self, env: str, actor: Any) -> None:
        if actor in self.executors.get(env, []):
            self.executors[env].remove(actor)
            self.pool.discard(actor)
        self.load.pop(actor, None)

    async def _collect(self) -> None:
        done, _ = await asyncio.wait(set(self.inflight), return_when=asyncio.FIRST_COMPLETED)
        for future in done:
            env, actor, ids = self.inflight.pop(future)
            if actor in self.load:
                self.load[actor] -= 1
            try:
                self.owner.record_latency(future.result()["latency"])
                self.errors = 0
            except RayActorError as exc:
                # The actor died mid-chunk: a fresh one takes its cells over from their last
                # checkpoints (their leases name the dead process).
                log.warning("executor for batch %s died (%s); its %d cells are taken over",
                            self.batch_id, exc, len(ids))
                self._lose(env, actor)
                self.queue.setdefault(env, deque()).appendleft((ids, True))
            except Exception:
                self.errors += 1
                if self.errors >= MAX_CHUNK_ERRORS:
                    raise  # not transient: stop here; a restart resumes the batch
                log.exception("a chunk of batch %s failed; its cells are tried again",
                              self.batch_id)
                self.queue.setdefault(env, deque()).append((ids, True))


def get_or_create(settings: Settings) -> Any:
    """The cluster's orchestrator (named, detached, in namespace "wtb")."""
    values = settings.for_actors()
    return BatchOrchestrator.options(
        name=settings.orchestrator_name, namespace=NAMESPACE, lifetime="detached",
        get_if_exists=True,
    ).remote(values)
