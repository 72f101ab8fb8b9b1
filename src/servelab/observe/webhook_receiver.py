"""A local webhook that records every notification Alertmanager sends, one JSON line each.

Why this module exists: a firing alert in Prometheus is not a page. Only the notification that
Alertmanager POSTs to a receiver is, after its routing, grouping and waiting. To see that last step
without a paging service, :class:`WebhookReceiver` is the receiver: a real HTTP server on loopback
(the standard library's ``ThreadingHTTPServer`` in a background thread of the caller) that appends
each POSTed JSON body to a ``.jsonl`` file and keeps it in memory, so a notebook or test can wait for
"the firing notification of VLLMQueueBacklog" with a deadline and show what it carried.

It runs inside the caller's process on purpose: it needs no binary, starts in milliseconds, and dies
with the kernel that started it. ``stop()`` (or leaving ``with``) shuts it down and frees the port.

Typical use::

    with WebhookReceiver(out_dir / "notifications.jsonl") as receiver:
        ...  # start Alertmanager with receiver.url
        note = receiver.wait_for("VLLMQueueBacklog", "firing", timeout_s=60)
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from servelab.errors import ServelabError

__all__ = ["NotificationStatus", "WebhookReceiver"]

NotificationStatus = Literal["firing", "resolved"]
_MAX_BODY = 4 * 1024 * 1024  # Alertmanager caps a webhook body far below this; refuse anything larger


class _Handler(BaseHTTPRequestHandler):
    """Accepts a JSON POST on any path; answers 200 once the body is recorded, 400 when it is not JSON."""

    server: _Server

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= _MAX_BODY:
            self._answer(400, f"expected a JSON body of 1 to {_MAX_BODY} bytes")
            return
        try:
            body = json.loads(self.rfile.read(length))
        except ValueError:
            self._answer(400, "the body is not JSON")
            return
        if not isinstance(body, dict):
            self._answer(400, "expected a JSON object (Alertmanager's webhook payload)")
            return
        self.server.owner._record(body, self.path)
        self._answer(200, "recorded")

    def _answer(self, code: int, text: str) -> None:
        data = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: a request line per notification would clutter a notebook's output."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: WebhookReceiver


class WebhookReceiver:
    """Records Alertmanager's webhook notifications to ``path`` (JSON lines) and in memory.

    Each record is Alertmanager's payload (``status``, ``receiver``, ``groupLabels``, ``alerts`` with
    their ``labels``, ``annotations``, ``startsAt``, ``endsAt``, ...) plus ``received_at`` (unix
    seconds, this machine's clock) and ``path`` (the URL path it was POSTed to).
    """

    def __init__(self, path: str | Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.path = Path(path)
        self.host = host
        self._requested_port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._records: list[dict[str, Any]] = []
        self._changed = threading.Condition()

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self) -> WebhookReceiver:
        """Bind the port (0: any free one) and serve in a daemon thread; the file starts empty."""
        if self._server is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("")
        self._records.clear()
        try:
            server = _Server((self.host, self._requested_port), _Handler)
        except OSError as err:
            raise ServelabError(
                f"the webhook receiver cannot listen on {self.host}:{self._requested_port}: {err}",
                "pass port=0 to take any free port",
            ) from None
        server.owner = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="webhook-receiver", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket; the JSONL file stays."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        if self._server is None:
            raise ServelabError("the webhook receiver is not running", "call start() or use it in a `with`")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """What Alertmanager's ``webhook_configs.url`` should be."""
        return f"http://{self.host}:{self.port}/alertmanager"

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"listening on {self.url}" if self.running else "stopped"
        return f"<WebhookReceiver {state}, {len(self._records)} notifications in {self.path}>"

    # --- records ----------------------------------------------------------------------------------

    def _record(self, body: dict[str, Any], path: str) -> None:
        record = {"received_at": time.time(), "path": path, **body}
        with self._changed:
            with self.path.open("a") as out:
                out.write(json.dumps(record) + "\n")
            self._records.append(record)
            self._changed.notify_all()

    def notifications(self) -> list[dict[str, Any]]:
        """Every notification received so far, oldest first (a copy)."""
        with self._changed:
            return list(self._records)

    def table(self) -> pd.DataFrame:
        """One row per alert per notification: when it arrived, the notification's and the alert's status, labels."""
        rows = []
        for number, note in enumerate(self.notifications(), start=1):
            for alert in note.get("alerts", []):
                labels = alert.get("labels", {})
                rows.append(
                    {
                        "notification": number,
                        "received_at": pd.Timestamp(note["received_at"], unit="s"),
                        "status": note.get("status"),
                        "alertname": labels.get("alertname"),
                        "alert_status": alert.get("status"),
                        "startsAt": alert.get("startsAt"),
                        "endsAt": alert.get("endsAt"),
                        **{k: v for k, v in labels.items() if k != "alertname"},
                    }
                )
        return pd.DataFrame(rows)

    @staticmethod
    def _status_of(note: dict[str, Any], alertname: str) -> str | None:
        """``firing`` if any alert named ``alertname`` in ``note`` fires, ``resolved`` if all resolved, else None."""
        statuses = {
            a.get("status") for a in note.get("alerts", []) if a.get("labels", {}).get("alertname") == alertname
        }
        if not statuses:
            return None
        return "firing" if "firing" in statuses else "resolved"

    def latest(self, alertname: str) -> dict[str, Any] | None:
        """The most recent notification that mentions ``alertname`` (None before the first one)."""
        for note in reversed(self.notifications()):
            if self._status_of(note, alertname) is not None:
                return note
        return None

    def wait_for(self, alertname: str, status: NotificationStatus, timeout_s: float = 60.0) -> dict[str, Any]:
        """Wait until the latest notification about ``alertname`` says ``status``; return that notification.

        "Latest", not "any": an alert that flaps (resolves and fires again) leaves an older resolved
        notification behind, and only the newest one tells where the alert stands now. Raises a
        :class:`ServelabError` listing what did arrive once ``timeout_s`` passes: it never hangs.
        """
        if status not in ("firing", "resolved"):
            raise ServelabError(f"status {status!r} is not a notification status", "use 'firing' or 'resolved'")
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                note = self.latest(alertname)
                if note is not None and self._status_of(note, alertname) == status:
                    return note
                left = deadline - time.monotonic()
                if left <= 0 or not self.running:
                    seen = [
                        (n.get("status"), [a.get("labels", {}).get("alertname") for a in n.get("alerts", [])])
                        for n in self._records
                    ]
                    raise ServelabError(
                        f"no {status} notification for {alertname} within {timeout_s:.0f} s "
                        f"(receiver {'running' if self.running else 'stopped'}; received: {seen or 'nothing'})",
                        "check that Prometheus lists Alertmanager (its config's alerting: block), that the alert "
                        "really is firing/resolved in Prometheus, and Alertmanager's log under results/logs/",
                    )
                self._changed.wait(timeout=min(left, 1.0))
