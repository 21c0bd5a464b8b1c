"""Parking: giving up on a message that the failure policy says will not succeed.

It is published to ``reports.rejected`` with the error, its report is recorded as
rejected, and its item (if any, and not final) is put before an analyst with the
reason, so the report still ends in a recorded state and the stage moves on.
"""

from __future__ import annotations

import logging

from hotline.kernel.messages import InvalidMessage, Outgoing, field_of, rejection
from hotline.kernel.ports import UnitOfWork
from hotline.kernel.states import FINAL, ItemState

log = logging.getLogger(__name__)


def park(stage: str, topic: str, raw: bytes | str, uow: UnitOfWork, exc: BaseException, why: str) -> list[Outgoing]:
    """``why``: the policy's words (e.g. "failed 5 times")."""
    uow.rollback()
    reason = f"stage {stage} {why} on this message ({type(exc).__name__}: {exc}); parked for an operator"
    err = InvalidMessage("processing_failed", reason, field_of(raw, "report_id"))
    item_id = field_of(raw, "item_id")
    if item_id is not None:
        item = uow.items.get(item_id)
        if item is not None and item.state not in FINAL:
            uow.items.set_state(item, ItemState.AWAITING_ASSESSMENT, reason + "; an analyst decides", stage)
    uow.reports.record_rejection(stage, err)
    log.error("stage %s parked a message from %s: %s", stage, topic, reason)
    return [rejection(stage, topic, raw, err)]
