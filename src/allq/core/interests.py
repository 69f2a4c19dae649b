"""Interest routing: which tubes want an event (couchqueue's "interests").

A tube registers *interests*: ``"*"`` (every event) or ``{field: pattern, ...}``,
regular expressions searched in the event's top-level fields. An event with
scope ``any`` goes to a tube when one of its fields matches (couchqueue's OR);
with ``all`` only when every one does. A field's value is matched as text: a
string as it is, anything else as its compact JSON; a missing field never
matches.

Patterns are RE2's (``google-re2``): matching takes time linear in the text, so
no pattern, however pathological (``(a+)+$``), can stall the server on a long
field; constructs RE2 cannot run in linear time (backreferences, lookaround)
are refused when the interest is registered, with the other bad patterns.

Every server holds the whole table. Each tube's entry carries a *version* (the
registering client's wall clock) and a deletion is kept as a tombstone, so
entries merge last-writer-wins: applying the same entries in any order, any
number of times, gives the same table. That lets a client push what a server
missed while it was down (:meth:`InterestTable.merge` of another server's
entries), and makes journal records safe to replay. Pure: no clock, no I/O.
"""

import json
from collections.abc import Callable, Iterable, Iterator

import attrs
import re2

from allq.errors import BadRequest
from allq.vocabulary import (
    INTEREST_FIELD,
    MAX_INTEREST_FIELDS,
    MAX_INTEREST_PATTERN,
    MAX_INTEREST_TUBES,
    check_tube,
)

#: A tube's interests: ``"*"`` or ``{field: pattern}``; ``None`` in a tombstone.
Interests = str | dict[str, str] | None

_OPTIONS = re2.Options()
# The compiled program's memory, per pattern: RE2 refuses a pattern needing more.
_OPTIONS.max_mem = 8 << 20
# A bad pattern is answered 400 with its reason; RE2 need not also log it to stderr.
_OPTIONS.log_errors = False


def check_interests(interests: object) -> Interests:
    """Validate a registration's interests (``"*"`` or an object of patterns).

    :raises BadRequest: wrong type, too many or badly named fields, or a pattern
        RE2 cannot compile (the message says which field and why).
    """
    if interests == "*":
        return "*"
    if not isinstance(interests, dict) or not interests:
        raise BadRequest('interests must be "*" or an object of field: regex')
    if len(interests) > MAX_INTEREST_FIELDS:
        raise BadRequest(f"interests may name at most {MAX_INTEREST_FIELDS} fields")
    for field, pattern in interests.items():
        _compile(field, pattern)
    return interests


def _compile(field: object, pattern: object):
    if not isinstance(field, str) or not INTEREST_FIELD.fullmatch(field):
        raise BadRequest("an interest's field name must be 1-200 characters, "
                         "no control characters")
    if not isinstance(pattern, str) or len(pattern) > MAX_INTEREST_PATTERN:
        raise BadRequest(f"interest {field[:40]!r} must be a regex of at most "
                         f"{MAX_INTEREST_PATTERN} characters")
    try:
        return re2.compile(pattern, _OPTIONS)
    except re2.error as e:
        raise BadRequest(f"interest {field[:40]!r} is not a valid RE2 regex: "
                         f"{str(e)[:200]}") from None


@attrs.frozen
class InterestEntry:
    """One tube's interests at one version (``interests`` ``None``: deleted)."""

    tube: str
    interests: Interests
    version: float

    def order(self) -> tuple:
        """What decides between two entries of a tube: the later version, then
        (equal clocks) a fixed order of the contents, so every server agrees."""
        return (self.version, json.dumps(self.interests, sort_keys=True))

    def record(self) -> list:
        """``[tube, interests, version]``: the wire's and the journal's form."""
        return [self.tube, self.interests, self.version]


@attrs.define
class _Compiled:
    everything: bool
    patterns: list[tuple[str, object]]


class InterestTable:
    """Every tube's interests, merged last-writer-wins, and the event matcher.

    :param on_change: told each entry that changed the table (the journal's hook).
    """

    def __init__(self, on_change: Callable[[InterestEntry], None] | None = None) -> None:
        self._entries: dict[str, InterestEntry] = {}
        self._compiled: dict[str, _Compiled] = {}
        #: ``_compiled``'s items by tube name, rebuilt after a change (not per event).
        self._routes: list[tuple[str, _Compiled]] = []
        self.on_change = on_change
        #: Events matched here, and those no tube wanted (dropped or refused).
        self.events = 0
        self.events_unmatched = 0

    def __len__(self) -> int:
        """How many tubes have interests now (tombstones not counted)."""
        return len(self._compiled)

    def entries(self) -> Iterator[InterestEntry]:
        """Every entry, tombstones included, by tube name."""
        for tube in sorted(self._entries):
            yield self._entries[tube]

    def live(self) -> list[InterestEntry]:
        """The entries of tubes that have interests, by tube name."""
        return [entry for entry in self.entries() if entry.interests is not None]

    def merge(self, records: Iterable[object]) -> list[InterestEntry]:
        """Apply ``[tube, interests, version]`` records, each only if newer than
        the tube's entry; all are checked before any is applied.

        :returns: the entries that changed the table.
        :raises BadRequest: a malformed record, a bad pattern, or too many tubes.
        """
        entries = [self._entry(record) for record in records]
        new_tubes = {e.tube for e in entries if e.tube not in self._entries}
        if len(self._entries) + len(new_tubes) > MAX_INTEREST_TUBES:
            raise BadRequest(f"at most {MAX_INTEREST_TUBES} tubes may have interests")
        changed = []
        for entry in entries:
            current = self._entries.get(entry.tube)
            if current is not None and current.order() >= entry.order():
                continue
            self._entries[entry.tube] = entry
            if entry.interests is None:
                self._compiled.pop(entry.tube, None)
            else:
                self._compiled[entry.tube] = _compile_all(entry.interests)
            changed.append(entry)
            if self.on_change is not None:
                self.on_change(entry)
        if changed:
            self._routes = sorted(self._compiled.items())
        return changed

    def restore(self, records: Iterable[object]) -> int:
        """Put back journaled records, skipping any that no longer validate;
        how many were taken."""
        taken = 0
        for record in records:
            try:
                taken += len(self.merge([record]))
            except BadRequest:
                pass
        return taken

    def match(self, data: dict, scope: str) -> list[str]:
        """The tubes (by name) whose interests match the event ``data``; counts it."""
        self.events += 1
        texts: dict[str, str | None] = {}
        tubes = []
        for tube, compiled in self._routes:
            if compiled.everything or _matches(compiled.patterns, data, scope, texts):
                tubes.append(tube)
        if not tubes:
            self.events_unmatched += 1
        return tubes

    @staticmethod
    def _entry(record: object) -> InterestEntry:
        if not isinstance(record, list) or len(record) != 3:
            raise BadRequest("an interest entry is [tube, interests or null, version]")
        tube, interests, version = record
        check_tube(tube)
        if not isinstance(version, int | float) or isinstance(version, bool):
            raise BadRequest("an interest's version must be a number")
        if interests is not None:
            interests = check_interests(interests)
        return InterestEntry(tube, interests, float(version))


def _compile_all(interests: Interests) -> _Compiled:
    if interests == "*":
        return _Compiled(True, [])
    return _Compiled(False, [(field, _compile(field, pattern))
                             for field, pattern in sorted(interests.items())])


def _matches(patterns: list, data: dict, scope: str, texts: dict) -> bool:
    want_all = scope == "all"
    for field, regex in patterns:
        text = texts[field] if field in texts else texts.setdefault(field, _text(data, field))
        hit = text is not None and regex.search(text) is not None
        if hit and not want_all:
            return True
        if not hit and want_all:
            return False
    return want_all


def _text(data: dict, field: str) -> str | None:
    """A field's value as the text its patterns search (``None``: no such field)."""
    if field not in data:
        return None
    value = data[field]
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)
