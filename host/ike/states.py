"""The states of IKE SAs and Child SAs, and what a rekey made of a Child SA.

They are ``StrEnum``s: a state compares equal to its value ("established"), so logs and the
control views show the plain word.
"""
from __future__ import annotations

from enum import StrEnum


class IkeSaState(StrEnum):
    CONNECTING = "connecting"       # IKE_SA_INIT / IKE_AUTH in progress ("half-open" for a responder)
    ESTABLISHED = "established"
    DELETING = "deleting"           # our Delete of the IKE SA is in flight
    DEAD = "dead"                   # removed from every table; late messages find nothing


class ChildSaState(StrEnum):
    INSTALLING = "installing"       # keys agreed, the board has not answered the install yet
    INSTALLED = "installed"
    DELETING = "deleting"           # our Delete of it is in flight
    DEAD = "dead"


class RekeyState(StrEnum):
    """What a rekey makes of a Child SA (``ChildSa.rekey_state``; None: no rekey involves it)."""
    REKEYING = "rekeying"           # our rekey of it runs
    REKEYED = "rekeyed"             # a successor replaced it (rekey, or reauthentication): it goes
    REDUNDANT = "redundant"         # created by the losing half of a simultaneous rekey (§2.8.1)
    RECREATE = "recreate"           # dropped while our rekey ran: the rekey replaces it, or it is created anew
