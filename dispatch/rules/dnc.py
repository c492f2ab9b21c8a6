"""The do-not-call list as the hub checks it: numbers from the store's ``do_not_call`` table.

The hub loads the list on start, adds the numbers its own opt-outs commit, and reloads it
every ``refresh`` seconds when the table changed (``dispatch dnc`` from another shell), so a
number added while its record waits is seen before that record is dialed.
"""

from __future__ import annotations

from datetime import datetime

__all__ = ["DoNotCallList"]


class DoNotCallList:
    def __init__(self) -> None:
        self._numbers: dict[str, datetime | None] = {}  # phone -> when it was added
        self.fingerprint: tuple[int, datetime | None] = (0, None)
        self.checked_at: datetime | None = None  # when the list was last read from the store
        self._added: list[tuple[str, datetime]] = []  # added here, in order

    def reading(self) -> int:
        """Mark the start of a read of the store's list (pass it to :meth:`replace`)."""
        return len(self._added)

    def replace(
        self,
        numbers: dict[str, datetime | None],
        fingerprint: tuple[int, datetime | None],
        reading: int | None = None,
    ) -> None:
        """The list as read from the store; the numbers added here since ``reading`` began
        (an opt-out committed meanwhile) are kept."""
        if reading is not None:
            for phone, at in self._added[reading:]:
                numbers.setdefault(phone, at)
        self._added.clear()
        self._numbers = numbers
        self.fingerprint = fingerprint

    def add(self, phone: str, at: datetime) -> None:
        """A number this process put on the list (its commit is done)."""
        self._numbers.setdefault(phone, at)
        self._added.append((phone, at))

    def since(self, phone: str) -> datetime | bool:
        """False if ``phone`` is not listed; else when it was added (True if unknown)."""
        if phone not in self._numbers:
            return False
        return self._numbers[phone] or True

    def __contains__(self, phone: object) -> bool:
        return phone in self._numbers

    def __len__(self) -> int:
        return len(self._numbers)
