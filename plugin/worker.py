"""Workers: claim a job with a lease, run it, and on failure retry with backoff or bury it as a dead
letter, or park it when it waits on something only a person can fix (a failure that says what it
waits on): a parked job burns no attempt and is not claimed until the store releases it.

The worker knows no kinds of job: it runs the Task it was given for a job's kind, and a failed run
goes to the task's `failed` hook (what that failure means to the task's own records, and the
callback to queue with it) before the worker stores the job's fate. How long a retry waits, and
how many attempts a job gets, is the Backoff's business (plugin/backoff.py).

A worker that dies leaves its jobs to whoever claims next once it is known gone, not after the
lease: each process that claims registers itself and beats every `heartbeat_seconds`; a few missed
beats, or its pid found gone by a process of the same machine, make its running jobs claimable at
once. (The lease stays for the worker that lives but is stuck on a job.) A worker that is stopped
hands its running jobs back before it exits.

No job holds a worker for ever, and no shop holds them all: a job has a total deadline (its lease is
renewed only until then, then it is stopped and retried like any failure); loops are grouped in
lanes, each claiming only its kinds of job, so that slow jobs of one kind leave the other lanes
free; and a claim passes over a shop that has `shop_limit` jobs of the kind running already.

A database that goes away (restarted, cut off) stops no loop: each waits, trying again every
`STORE_RETRY_SECONDS`, and a job cut short by it runs again from its last durable step once the
database answers, if its lease is still this worker's."""

import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import anyio
import anyio.abc
import msgspec

from plugin import metrics
from plugin.backoff import Backoff
from plugin.errors import JobError, OperationError
from plugin.store import NewCallback, Store, StoreUnavailable
from plugin.store.records import Job, Wait, WorkerRecord

__all__ = [
    "DEADLINE_ERROR",
    "STORE_RETRY_SECONDS",
    "Backoff",
    "FailureHook",
    "Fate",
    "Handler",
    "JobFailure",
    "Lane",
    "Task",
    "Worker",
    "pid_scope",
    "process_alive",
]

log = logging.getLogger("plugin.worker")

Handler = Callable[[Job], Awaitable[None]]
# What a failed run leads to: another attempt later, the dead letters, or a wait for someone to fix
# what the failure names.
Fate = Literal["retrying", "dead", "waiting"]


class JobFailure(OperationError):
    """Raised by a handler. A failure that `waits_for` something parks the job until the store
    releases it; else one that is not `retryable` is buried at once, and others are retried with
    backoff (at least `retry_after` later) until the attempts run out."""

    def __init__(
        self,
        error: JobError,
        *,
        retryable: bool,
        retry_after: float | None = None,
        waits_for: Wait | None = None,
    ) -> None:
        self.error = error
        self.waits_for = waits_for
        super().__init__(error.line(), retryable=retryable, retry_after=retry_after)


FailureHook = Callable[[Job, JobFailure, Fate], Awaitable[NewCallback | None]]


@dataclass(frozen=True, kw_only=True)
class Task:
    """What the worker runs for one kind of job. `run` does the job; `failed`, when given, is
    told how a failed run ends before the worker records it (its own bookkeeping: an audit entry,
    a metric) and returns the status callback to queue with that outcome, if any."""

    run: Handler
    failed: FailureHook | None = None


class Lane(msgspec.Struct, frozen=True, kw_only=True):
    """`loops` workers that claim only jobs of `kinds`: however long those jobs take, they hold
    these loops and no others."""

    kinds: tuple[str, ...]
    loops: int
    # Jobs of these kinds one shop may have running at once (None: the worker's `shop_limit`).
    shop_limit: int | None = None


# A job stopped at its deadline, as its error says.
DEADLINE_ERROR = "JOB_DEADLINE"
# While the database is away, a loop tries it again after the first, doubling to the second.
STORE_RETRY_SECONDS = (0.1, 5.0)
# Heartbeats a worker may miss before its running jobs are anyone's to claim.
MISSED_BEATS = 3
# How long a stopping worker may take to hand its jobs back (the database may be away).
HAND_BACK_SECONDS = 10.0


def pid_scope() -> str:
    """Which processes can tell whether a pid of ours lives: those of this machine, since its
    boot, in this pid namespace (a container has its own; two containers may share a host name).
    Without /proc (not Linux), the host name alone."""
    host = socket.gethostname()
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return host
    return f"{host}/{boot}/{namespace}"


def process_alive(pid: int) -> bool:
    """Whether process `pid` of this pid scope still runs. A zombie (killed, not yet reaped by
    its parent) is gone. A pid taken since by another process counts as alive: its worker is then
    found gone by its missed heartbeats instead."""
    if pid <= 0:  # 0 and negative pids name process groups, not a process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        return True
    # "pid (name) state ...": the name may hold spaces and parentheses, the state follows the last.
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


_encoder = msgspec.json.Encoder()


class Worker:
    def __init__(
        self,
        store: Store,
        handlers: Mapping[str, Task | Handler],
        *,
        concurrency: int = 4,
        lanes: Sequence[Lane] | None = None,
        shop_limit: int | None = None,
        job_deadline_seconds: float = 300.0,
        lease_seconds: float = 60.0,
        poll_seconds: float = 1.0,
        backoff: Backoff | None = None,
        owner: str | None = None,
        heartbeat_seconds: float = 2.0,
    ) -> None:
        """`handlers`: what to run for each kind of job, a Task or only its `run`. `lanes` default
        to one lane of `concurrency` loops for every kind of `handlers`.
        `shop_limit`: jobs of one kind a shop may have running at once, across every worker of
        the store (None: no cap). `job_deadline_seconds`: how long one run of a job may take.
        `heartbeat_seconds`: how often the worker tells the store it lives; after MISSED_BEATS
        missed, its running jobs are claimable by any other."""
        self.store = store
        self.tasks = {
            kind: task if isinstance(task, Task) else Task(run=task)
            for kind, task in handlers.items()
        }
        self.lanes = (
            list(lanes) if lanes is not None else [Lane(kinds=tuple(handlers), loops=concurrency)]
        )
        for lane in self.lanes:
            if unknown := set(lane.kinds) - set(handlers):
                raise ValueError(f"no handler for the lane's kinds {sorted(unknown)}")
        self.shop_limit = shop_limit
        self.job_deadline_seconds = job_deadline_seconds
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.backoff = backoff or Backoff()
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.heartbeat_seconds = heartbeat_seconds
        self._wakeup = anyio.Event()
        self._store_away = False
        self._scope: anyio.CancelScope | None = None
        self._stopped = False
        self._pid_scope = pid_scope()
        self._started_at = time.time()

    def wake(self) -> None:
        """New work is stored: idle loops look now instead of at their next poll. Call it in the
        worker's event loop (the store's listener does)."""
        self._wakeup.set()

    def stop(self) -> None:
        """Stop now: claim nothing more, cancel the jobs in flight (each step of a job is durable:
        the next run carries on from the last one done) and hand back whatever this worker holds,
        queued and due at once, the attempt not counted. `run` returns when that is done. Call it
        in the worker's event loop (a signal handler does)."""
        self._stopped = True
        if self._scope is not None:
            self._scope.cancel()

    async def run(self) -> None:
        """Register, beat, claim and run jobs until stopped or cancelled; then hand back the jobs
        still held and leave the workers table (within HAND_BACK_SECONDS, even when cancelled)."""
        if sum(lane.loops for lane in self.lanes) < 1 or self._stopped:
            return
        self._started_at = time.time()
        try:
            with anyio.CancelScope() as self._scope:
                # Registered before the first claim (a job never names an unknown owner), and the
                # dead workers of this machine found at once: their jobs are the first claimed.
                await self._beat()
                async with anyio.create_task_group() as group:
                    # Listening first: a job stored after this is announced, one before it is
                    # claimed.
                    await group.start(self._listen)
                    group.start_soon(self._keep_beating)
                    for lane in self.lanes:
                        for _ in range(lane.loops):
                            group.start_soon(self._loop, lane)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(HAND_BACK_SECONDS):
                await self._retire()

    async def _retire(self) -> None:
        try:
            handed_back = await self.store.retire_worker(self.owner, time.time())
        except Exception as exc:  # the database away: the missed heartbeats free the jobs
            log.warning(
                "could not hand the running jobs back; others take them when they see this "
                "worker's heartbeat stop",
                extra={"error": f"{type(exc).__name__}: {exc}"},
            )
            return
        if handed_back:
            log.info("stopped; running jobs handed back", extra={"jobs": handed_back})

    async def _keep_beating(self) -> None:
        while True:
            await anyio.sleep(self.heartbeat_seconds)
            try:
                await self._beat()
            except Exception as exc:  # the database away: beat again at the next one
                log.warning("heartbeat failed", extra={"error": f"{type(exc).__name__}: {exc}"})

    async def _beat(self) -> None:
        now = time.time()
        beat = await self.store.heartbeat(
            WorkerRecord(
                owner=self.owner,
                host=socket.gethostname(),
                pid=os.getpid(),
                pid_scope=self._pid_scope,
                started_at=self._started_at,
                heartbeat_at=now,
                alive_until=now + MISSED_BEATS * self.heartbeat_seconds,
            ),
            now,
        )
        dead = [other.owner for other in beat.neighbours if not process_alive(other.pid)]
        if dead:
            await self.store.mark_workers_dead(dead, now)
            log.warning(
                "workers of this machine found dead; their jobs are taken over",
                extra={"workers": dead},
            )
        if dead or beat.orphaned:
            self.wake()  # idle loops claim those jobs now, not at their next poll

    async def _listen(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        # Other processes' new jobs; the in-process ones come through `wake` directly.
        await self.store.listen_for_work(self.wake, task_status=task_status)

    async def _loop(self, lane: Lane) -> None:
        retry_in = STORE_RETRY_SECONDS[0]
        while True:
            # The event to wait on is taken before claiming: a wake-up that comes while the
            # claim finds nothing is then not lost.
            wakeup = self._wakeup
            if wakeup.is_set():
                wakeup = self._wakeup = anyio.Event()
            try:
                job = await self.store.claim_job(
                    self.owner,
                    self.lease_seconds,
                    time.time(),
                    kinds=lane.kinds,
                    shop_limit=self.shop_limit if lane.shop_limit is None else lane.shop_limit,
                )
            except StoreUnavailable as exc:
                self._store_failed(exc)
                await anyio.sleep(retry_in)
                retry_in = min(retry_in * 2, STORE_RETRY_SECONDS[1])
                continue
            self._store_answered()
            retry_in = STORE_RETRY_SECONDS[0]
            if job is None:
                with anyio.move_on_after(self.poll_seconds):
                    await wakeup.wait()
                continue
            await self._process(job)

    def _store_failed(self, exc: StoreUnavailable) -> None:
        if not self._store_away:  # once an outage, not once a loop and a retry
            self._store_away = True
            log.warning("database unavailable; workers wait for it", extra={"error": str(exc)})

    def _store_answered(self) -> None:
        if self._store_away:
            self._store_away = False
            log.warning("database available again; workers carry on")

    async def _process(self, job: Job) -> None:
        metrics.JOB_LAG.observe(max(0.0, time.time() - job.due_at))
        deadline = time.time() + self.job_deadline_seconds
        # Cut short by the database going away: each step of a job is durable, so once the
        # database answers the job runs again from the last one done, if it is still ours.
        # The pause before each run again grows across them: a job whose statement keeps timing
        # out while the database answers everything else is not run again ten times a second.
        pause = STORE_RETRY_SECONDS[0]
        while not await self._run(job, deadline):
            if not await self._resume(job, deadline, pause):
                return
            pause = min(pause * 2, STORE_RETRY_SECONDS[1])

    async def _resume(self, job: Job, deadline: float, pause: float) -> bool:
        """Wait `pause`, then for the database to answer again; then whether the job's lease is
        still ours (renewed), or has passed to another worker meanwhile."""
        retry_in = pause
        while True:
            await anyio.sleep(retry_in)
            until = min(time.time() + self.lease_seconds, deadline)
            try:
                # Alive first: after an outage longer than three beats, this worker's row says
                # it is gone, and another would take the job it is about to carry on with.
                await self._beat()
                ours = await self.store.extend_lease(job.id, self.owner, until)
            except StoreUnavailable:
                retry_in = min(retry_in * 2, STORE_RETRY_SECONDS[1])
                continue
            self._store_answered()
            if not ours:
                log.warning("lease lost while the database was away", extra={"job": job.id})
            return ours

    async def _run(self, job: Job, deadline: float) -> bool:
        """Run the job once and store how it went; False if the database went away meanwhile."""
        task = self.tasks[job.kind]
        async with anyio.create_task_group() as group:
            group.start_soon(self._keep_lease, job, group.cancel_scope, deadline)
            try:
                await self._attempt(job, task, deadline)
            except StoreUnavailable as exc:
                self._store_failed(exc)
                return False
            finally:
                group.cancel_scope.cancel()
        return True

    async def _attempt(self, job: Job, task: Task, deadline: float) -> None:
        failure: JobFailure | None = None
        with anyio.move_on_after(deadline - time.time()) as limit:
            try:
                await task.run(job)
            except JobFailure as caught:
                failure = caught
            except StoreUnavailable:
                raise  # not the job's failure: it runs again once the database answers
            except Exception as exc:
                log.exception("job crashed", extra={"job": job.id, "kind": job.kind})
                error = JobError(
                    step=job.kind,
                    error_code="INTERNAL_ERROR",
                    error_messages=[f"{type(exc).__name__}: {exc}"],
                )
                failure = JobFailure(error, retryable=True)
        if limit.cancelled_caught:
            # Stopped wherever it was: each step of a job is durable, so the next run
            # carries on from the last one done.
            error = JobError(
                step=job.kind,
                error_code=DEADLINE_ERROR,
                error_messages=[
                    f"the job ran for more than its deadline of "
                    f"{self.job_deadline_seconds:g} s and was stopped; it will be retried"
                ],
            )
            failure = JobFailure(error, retryable=True)
        if failure is None:
            await self.store.finish_job(job.id, self.owner, time.time())
        else:
            await self._failed(job, task, failure)

    async def _keep_lease(self, job: Job, scope: anyio.CancelScope, deadline: float) -> None:
        # Renewed until the job's deadline, never past it: a job that never ends (an endpoint
        # that drips bytes for ever) is stopped there, and if this process is stuck too, another
        # worker takes the job over when the lease runs out. (In the moment between the deadline
        # and the retry being recorded, a worker elsewhere may take it over: the retry then finds
        # the lease gone and changes nothing, and that worker runs the job.)
        while True:
            await anyio.sleep(self.lease_seconds / 3)
            until = min(time.time() + self.lease_seconds, deadline)
            try:
                extended = await self.store.extend_lease(job.id, self.owner, until)
            except StoreUnavailable:
                continue  # the job's own calls find the database away too: `_process` waits
            if not extended:
                log.warning("lease lost; another worker has the job", extra={"job": job.id})
                scope.cancel()
                return
            if until >= deadline:
                return

    async def _failed(self, job: Job, task: Task, failure: JobFailure) -> None:
        attempt = job.attempts + 1
        fate: Fate
        if failure.waits_for is not None:
            fate = "waiting"
        elif not failure.retryable or self.backoff.gives_up(attempt):
            fate = "dead"
        else:
            fate = "retrying"
        # The task's bookkeeping first, its callback then stored with the outcome in one write.
        callback = await task.failed(job, failure, fate) if task.failed else None
        now = time.time()
        error = _encoder.encode(failure.error).decode()
        extra: dict[str, object] = {
            "job": job.id,
            "kind": job.kind,
            "subject": job.key,
            "error": failure.error.line(),
        }
        if failure.waits_for is not None:
            # Retrying cannot help until someone fixes what it waits on: no attempt is burned, no
            # backoff runs out, and saving the fix releases the job (Store.release_waiting).
            await self.store.park_job(job.id, self.owner, failure.waits_for, error, now, callback)
            log.warning("job waiting", extra={**extra, "waits_for": failure.waits_for})
        elif fate == "dead":
            await self.store.bury_job(job.id, self.owner, error, now, callback)
            log.error("job dead", extra={**extra, "attempt": attempt})
        else:
            delay = self.backoff.wait(attempt, failure.retry_after)
            await self.store.retry_job_later(job.id, self.owner, now + delay, error, now, callback)
            log.warning(
                "job will retry",
                extra={**extra, "attempt": attempt, "retry_in": round(delay, 3)},
            )
