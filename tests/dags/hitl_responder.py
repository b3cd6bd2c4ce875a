"""Answer an Airflow human-in-the-loop task from a test, the way the HITL REST endpoint
(PATCH .../hitlDetails) or the scheduler's timeout sweep do it, against the same
metadata DB that ``dag.test()`` uses. ``dag.test()`` parks HITL tasks in
AWAITING_INPUT and waits for exactly this kind of outside response.
"""

from __future__ import annotations

import threading
import time


def _respond_once(dag_id: str, task_id: str, option: str | None, user: str | None, comment: str) -> bool:
    from airflow._shared.timezones import timezone
    from airflow.models.hitl import HITLDetail
    from airflow.models.taskinstance import TaskInstance as TI
    from airflow.models.trigger import handle_event_submit
    from airflow.triggers.base import TriggerEvent
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState
    from sqlalchemy import select

    with create_session() as session:
        ti = session.scalar(
            select(TI).where(TI.dag_id == dag_id, TI.task_id == task_id, TI.state == TaskInstanceState.AWAITING_INPUT)
        )
        if ti is None:
            return False
        detail = session.scalar(select(HITLDetail).where(HITLDetail.ti_id == ti.id))
        if detail is None:
            return False
        if option is None:  # the scheduler's timeout sweep: defaults become the answer, nobody responded
            detail.chosen_options = list(detail.defaults or [])
            detail.params_input = {k: v.get("value") if isinstance(v, dict) else v
                                   for k, v in (detail.params or {}).items()}
            detail.responded_by = None
            timedout = True
        else:
            detail.chosen_options = [option]
            detail.params_input = {"comment": comment}
            detail.responded_by = {"id": user, "name": user}
            timedout = False
        detail.responded_at = timezone.utcnow()
        session.add(detail)
        handle_event_submit(TriggerEvent(detail.as_resume_event_payload(timedout=timedout)),
                            task_instance=ti, session=session)
    return True


class Responder(threading.Thread):
    """Answers the HITL task once, as soon as it waits; ``stop()`` ends it when the run needed no answer.

    A responder must not outlive its run: one left looping after a run that skipped its approval would
    answer the *next* run's approval (with its own option), which made a later "Approve" a timeout.
    """

    def __init__(self, dag_id: str, option: str | None, user: str | None, comment: str, task_id: str,
                 timeout_s: float) -> None:
        super().__init__(name="hitl-responder", daemon=True)
        self._args = (dag_id, task_id, option, user, comment)
        self._deadline = time.monotonic() + timeout_s
        self._stop_event = threading.Event()
        self.answered = False

    def run(self) -> None:
        while time.monotonic() < self._deadline and not self._stop_event.is_set():
            if _respond_once(*self._args):
                self.answered = True
                return
            self._stop_event.wait(0.5)

    def stop(self, timeout: float = 10) -> None:
        self._stop_event.set()
        self.join(timeout=timeout)


def respond_in_background(dag_id: str, option: str | None, *, user: str | None = None, comment: str = "",
                          task_id: str = "approval", timeout_s: float = 900) -> Responder:
    """Start a thread that answers the HITL task as soon as it waits (option None = time out)."""
    responder = Responder(dag_id, option, user, comment, task_id, timeout_s)
    responder.start()
    return responder
