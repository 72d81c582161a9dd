"""A small explicit finite-state machine: a table of events, each with its source states and one target."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from dragonfly.common.errors import DragonflyError


class InvalidTransition(DragonflyError, ValueError):
    """An event was fired in a state that does not allow it."""

    def __init__(self, what: str, event: str, state: str) -> None:
        super().__init__(f"{what}: event {event} is not allowed in state {state}")
        self.event = event
        self.state = state


class StateMachine:
    """Validate transitions against a fixed table ``{event: (sources, target)}``; shared by all instances."""

    __slots__ = ("_table", "states")

    def __init__(self, states: Iterable[str], table: Mapping[str, tuple[Iterable[str], str]]) -> None:
        self.states = tuple(states)
        self._table = {event: (frozenset(sources), target) for event, (sources, target) in table.items()}
        for event, (sources, target) in self._table.items():
            unknown = (sources | {target}) - set(self.states)
            if unknown:
                raise ValueError(f"event {event} names unknown states {sorted(unknown)}")

    @property
    def events(self) -> tuple[str, ...]:
        """Return every event name."""
        return tuple(self._table)

    def can(self, event: str, state: str) -> bool:
        """Return whether ``event`` may fire in ``state``."""
        return state in self._table[event][0]

    def target(self, event: str, state: str, what: str) -> str:
        """Return the state ``event`` leads to from ``state``, or raise InvalidTransition naming ``what``."""
        sources, target = self._table[event]
        if state not in sources:
            raise InvalidTransition(what, event, state)
        return target
