"""A deterministic asyncio event loop on virtual time, and the actors it can pause.

What belongs here: ``VirtualTimeLoop`` (an ``asyncio.BaseEventLoop`` whose ``time()``
is a ``ManualClock``, and whose "selector" never waits: when nothing is ready it moves
the clock to the next timer), and ``Actor`` (one simulated process: every callback
scheduled in its context is held while it is paused and dropped once it is dead).

So ``asyncio.sleep``, ``wait_for`` and ``call_later`` run on virtual time, as fast as
the CPU allows and in the same order on every run: there are no sockets (not even the
self-pipe a selector loop makes), no threads (``run_in_executor`` runs the function
in place) and no real clock. The same ``ManualClock`` drives a
``LocalCoordinationServer``, whose leases therefore expire on the loop's time.

Pausing and killing need no cooperation from the code that runs: a task remembers the
``contextvars`` context it was created in, and every callback asyncio schedules for it
(its steps, the wake-ups of what it awaits, its timers) runs in that context, so the
loop can look up the actor there. Create an actor's tasks with ``actor.spawn``.

A killed actor's callbacks are held, never run, until ``finish()`` ends the run: it
cancels every task still pending, and lets each unwind. The loop keeps every task it
made until then, so no coroutine of a killed actor is garbage-collected mid-run (its
``finally`` blocks would run at a moment that depends on the collector, and on
whichever loop is running by then: a later run's).
"""

from __future__ import annotations

import asyncio
import contextvars
import math
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from typing import Any, TypeVar, TypeVarTuple, Unpack

from ferrymq._coordination import ManualClock
from ferrymq._core._errors import InternalError

__all__ = ["Actor", "VirtualTimeLoop"]

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")
_ACTOR: contextvars.ContextVar[Actor | None] = contextvars.ContextVar("ferry_sim_actor",
                                                                       default=None)
# Callbacks one paused actor may accumulate: a pause is seconds of virtual time, in
# which a node receives some thousands of frames and timer firings; more means a loop
# that runs away while paused (a bug in the simulation, not a state to simulate).
_BACKLOG_MAX = 200_000


class Actor:
    """One simulated process. ``pause()`` holds its callbacks (SIGSTOP), ``resume()``
    runs them in order (SIGCONT), ``kill()`` drops them for good (``kill -9``): its tasks
    never run again, and whatever awaits them waits for ever (or times out)."""

    def __init__(self, loop: VirtualTimeLoop, name: str) -> None:
        self.loop = loop
        self.name = name
        self.alive = True
        self.paused = False
        self._held: list[tuple[Callable[..., object], tuple[Any, ...],
                               contextvars.Context]] = []
        self.context = contextvars.copy_context()
        self.context.run(_ACTOR.set, self)
        loop._actors.append(self)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None
              ) -> asyncio.Task[Any]:
        return self.loop.create_task(coro, name=name, context=self.context)

    def call_later(self, delay_ms: int, callback: Callable[..., object], *args: Any) -> None:
        """Run ``callback`` in this actor after ``delay_ms`` (a message arriving)."""
        self.loop.call_later(delay_ms / 1000, callback, *args, context=self.context)

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        held, self._held = self._held, []
        for callback, args, context in held:
            self.loop.call_soon(callback, *args, context=context)

    def kill(self) -> None:
        self.alive = False

    def _end(self) -> None:
        self.alive = True
        self.resume()

    def _hold(self, callback: Callable[..., object], args: tuple[Any, ...]) -> None:
        if len(self._held) >= _BACKLOG_MAX:
            raise InternalError(f"{self.name} holds {_BACKLOG_MAX} callbacks while paused")
        self._held.append((callback, args, contextvars.copy_context()))


def _gated(callback: Callable[[Unpack[_Ts]], object], *args: *_Ts) -> None:
    actor = _ACTOR.get()
    if actor is not None and (actor.paused or not actor.alive):
        actor._hold(callback, args)
        return
    callback(*args)


class _Clockwork:
    """Stands where a loop's selector would: instead of waiting ``timeout`` for I/O, it
    moves virtual time by that much (whole milliseconds, rounded up so the timer that
    asked for it is due)."""

    def __init__(self, clock: ManualClock) -> None:
        self._clock = clock

    def select(self, timeout: float | None) -> list[object]:
        if timeout is None:
            # Nothing ready and no timer: every task waits for something that will never
            # happen. The simulation always has periodic timers, so this is a bug.
            raise InternalError("the simulated loop has nothing left to run")
        if timeout > 0:
            self._clock.advance(max(1, math.ceil(timeout * 1000)))
        return []

    def close(self) -> None:
        pass


class VirtualTimeLoop(asyncio.BaseEventLoop):
    """See the module docstring. ``clock`` is the virtual time in milliseconds."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__()
        self.clock = clock
        self._selector = _Clockwork(clock)
        # The clock's resolution: a timer is due when it falls within it. Left at the
        # monotonic clock's nanosecond, a timer set for exactly "now" would never be
        # due, since float seconds near 1.7e9 cannot tell now + 1 ns from now.
        self._clock_resolution = 0.001
        self._actors: list[Actor] = []
        self._tasks: list[asyncio.Task[Any]] = []
        # typeshed's task factory type lacks the ``context`` asyncio passes since 3.11.
        self.set_task_factory(self._make_task)  # type: ignore[arg-type]

    def _make_task(self, loop: asyncio.AbstractEventLoop,
                   coro: Coroutine[Any, Any, Any],
                   context: contextvars.Context | None = None) -> asyncio.Task[Any]:
        task = asyncio.Task(coro, loop=loop, context=context)
        self._tasks.append(task)
        return task

    def finish(self, *, timeout_s: float = 600.0) -> None:
        """End a run: revive every actor, cancel every pending task and run the loop
        until each has unwound (or ``timeout_s`` of virtual time has passed)."""
        for actor in self._actors:
            actor._end()
        pending = [t for t in self._tasks if not t.done()]
        self._tasks = []
        for task in pending:
            task.cancel()
        if pending:
            self.run_until_complete(asyncio.wait(pending, timeout=timeout_s))

    def time(self) -> float:
        return self.clock.now_ms() / 1000

    def call_soon(self, callback: Callable[[Unpack[_Ts]], object], *args: *_Ts,
                  context: contextvars.Context | None = None) -> asyncio.Handle:
        return super().call_soon(_gated, callback, *args, context=context)

    def call_at(self, when: float, callback: Callable[[Unpack[_Ts]], object],
                *args: *_Ts,
                context: contextvars.Context | None = None) -> asyncio.TimerHandle:
        return super().call_at(when, _gated, callback, *args, context=context)

    def run_in_executor(self, executor: Executor | None, func: Callable[[Unpack[_Ts]], _T],
                        *args: *_Ts) -> asyncio.Future[_T]:
        # No threads: the function runs now, in the caller's actor, and takes no
        # virtual time (what it stands for, a restore or a file copy, is instant here).
        del executor
        future: asyncio.Future[_T] = self.create_future()
        try:
            future.set_result(func(*args))
        except Exception as exc:  # handed to the awaiting caller, as an executor would
            future.set_exception(exc)
        return future

    # What a selector loop does with I/O events and its self-pipe: there are none.
    def _process_events(self, event_list: list[object]) -> None:
        del event_list

    def _write_to_self(self) -> None:
        pass
