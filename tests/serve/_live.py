"""Helpers of the live-server tests: a free port, a server process with a bounded start, multipart replies."""

from __future__ import annotations

import email
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A server process (own process group) answering on ``http://127.0.0.1:<port>``; its log in ``log``."""

    def __init__(self, cmd: Sequence[str], port: int, log: Path, env: dict[str, str] | None = None) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            list(cmd), stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )

    def wait(self, path: str, timeout: float) -> requests.Response:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                r = requests.get(self.url + path, timeout=5)
                if r.status_code == 200:
                    return r
            except requests.ConnectionError:
                pass
            time.sleep(1.0)
        raise TimeoutError(f"no 200 from {path} within {timeout:.0f} s:\n{self.tail()}")

    def tail(self, n: int = 60) -> str:
        self._log.flush()
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)
        self._log.close()


def multipart(response: requests.Response) -> dict[str, Any]:
    """MONAI Label's multipart infer reply -> ``{"params": dict, "image": (filename, bytes)}``."""
    head = f"Content-Type: {response.headers['content-type']}\r\n\r\n".encode()
    msg = email.message_from_bytes(head + response.content)
    out: dict[str, Any] = {}
    for part in msg.get_payload():
        name = part.get_param("name", header="content-disposition")
        body = part.get_payload(decode=True)
        out[name] = json.loads(body) if name == "params" else (part.get_filename(), body)
    return out
