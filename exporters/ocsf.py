"""Alert events as OCSF Detection Findings (class 2004, OCSF 1.3.0), a body format the
webhook and JSONL sinks can emit. The mapping is documented in docs/siem.md (OCSF).

Only alert events map to a finding (one finding per alert, ``finding_info.uid`` = the alert
id; opened = Create, the per-window updates, end and acknowledgement = Update, closed =
Close); ``finding`` returns None for other events and the sink skips them.
"""

from __future__ import annotations

from typing import Any

from expose.exporters.base import SEVERITIES, assess, severity_of
from expose.monitor import __version__
from expose.monitor.alerts.events import AlertChangeEvent, AlertUpdateEvent, Event

OCSF_VERSION = "1.3.0"
CLASS_UID = 2004  # Detection Finding
CATEGORY_UID = 2  # Findings
_ACTIVITY = {"opened": (1, "Create"), "updated": (2, "Update"), "ended": (2, "Update"),
             "acknowledged": (2, "Update"), "closed": (3, "Close")}
_SEVERITY_ID = {"info": 1, "low": 2, "medium": 3, "high": 4, "critical": 5}  # OCSF severity_id
_STATUS = {"open": (1, "New"), "acknowledged": (2, "In Progress"), "closed": (4, "Resolved")}


def finding(event: Event) -> dict[str, Any] | None:
    """The OCSF Detection Finding of an alert event; None for any other event."""
    if not isinstance(event, AlertChangeEvent | AlertUpdateEvent):
        return None
    a = event.alert
    activity_id, activity = _ACTIVITY[event.action]
    # the finding's severity is the alert's, whatever this update's (an acknowledgement of a
    # high alert is still a high finding)
    sev = "high" if event.action != "opened" else severity_of(event)
    status_id, status = _STATUS[a.status]
    verdict = assess(event)
    ms = int(round(event.ts * 1000))
    title = f"Impersonation suspected: the person on stream {a.stream!r} is not {a.profile!r}"
    return {
        "class_uid": CLASS_UID, "class_name": "Detection Finding",
        "category_uid": CATEGORY_UID, "category_name": "Findings",
        "activity_id": activity_id, "activity_name": activity,
        "type_uid": CLASS_UID * 100 + activity_id, "type_name": f"Detection Finding: {activity}",
        "time": ms,
        "severity_id": _SEVERITY_ID[sev], "severity": sev.capitalize(),
        "status_id": status_id, "status": status,
        "confidence_score": int(round(100 * verdict.score)) if verdict and verdict.score is not None else None,
        "message": a.explanation or title,
        "metadata": {
            "version": OCSF_VERSION,
            "product": {"name": "expose", "vendor_name": "expose", "version": __version__},
            "uid": str(event.seq), "logged_time": ms,
        },
        "finding_info": {
            "uid": a.id, "title": title, "desc": a.explanation or None,
            "types": sorted(a.reasons) or ["identity"],
            "created_time": int(round(a.opened_at * 1000)),
            "first_seen_time": int(round(a.opened_at * 1000)),
            "last_seen_time": int(round((a.ended_at or event.ts) * 1000)),
            "analytic": {"name": "expose impersonation monitor", "type_id": 4, "type": "Statistical"},
        },
        "resources": [{"type": "Video stream", "name": a.stream, "uid": a.stream}],
        "unmapped": {
            "profile": a.profile, "verdict": verdict.verdict if verdict else None, "threshold": a.threshold,
            "peak_distance": a.peak_distance, "mean_distance": a.mean_distance, "n_windows": a.n_windows,
            "t_start": a.t_start, "t_end": a.t_end, "reasons": a.reasons,
            "acknowledged_by": a.acknowledged_by, "closed_by": a.closed_by, "close_reason": a.close_reason,
        },
    }


assert set(_SEVERITY_ID) == set(SEVERITIES)
