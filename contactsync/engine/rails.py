"""The safety rails' stops, as values (vdirsyncer-style typed stops, not sentences): the planner
returns one, the report carries it, and its sentence is written in one place (`__str__`).

Mass-delete rail (docs/architecture.md 6): a plan that would remove more than `share` of the
folder AND more than `floor` contacts holds those removals back, unless forced.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MassDeleteStop:
    """The plan would remove `removing` contacts of `folder`; `vanished` of them are linked
    contacts already gone from a complete listing (counted apart: they say the listing may be
    wrong, not that we would delete them)."""

    removing: int
    folder: int
    vanished: int
    share: float
    floor: int

    def __str__(self) -> str:
        what = (f"{self.removing} of {self.folder} contacts in the folder" if not self.vanished
                else f"{self.removing} contacts: {self.removing - self.vanished} of the "
                     f"{self.folder} in the folder and {self.vanished} linked ones no longer "
                     "in it")
        return (f"would remove {what} (limit: more than {self.share:.0%} and more than "
                f"{self.floor}); nothing was removed: check the listings, or run again with "
                "--force")


def over_floor(count: int, floor: int) -> bool:
    """More than the rail's floor: below it no share of the folder stops a run."""
    return count > floor


def mass_delete_stop(removing: int, folder: int, vanished: int, *, share: float,
                     floor: int) -> MassDeleteStop | None:
    """The stop for a plan removing `removing` of `folder` contacts, or None if it may go."""
    if removing > share * folder and over_floor(removing, floor):
        return MassDeleteStop(removing, folder, vanished, share, floor)
    return None
