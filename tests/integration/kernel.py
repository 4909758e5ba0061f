"""Run code in a real kernel of a notebook server, over the Jupyter
websocket protocol, as JupyterLab does."""

import json
import time
import uuid

import requests
import websocket


class KernelDied(RuntimeError):
    pass


class Kernel:
    def __init__(self, server_url, token, kernel_name=None):
        self.server_url = server_url.rstrip("/") + "/"
        self.headers = {"Authorization": f"token {token}"}
        body = {"name": kernel_name} if kernel_name else {}
        r = requests.post(f"{self.server_url}api/kernels", json=body, headers=self.headers, timeout=60)
        r.raise_for_status()
        self.id = r.json()["id"]
        self.name = r.json()["name"]
        self.session = uuid.uuid4().hex
        ws_url = self.server_url.replace("http", "ws", 1) + f"api/kernels/{self.id}/channels?session_id={self.session}"
        self.ws = websocket.create_connection(ws_url, header=[f"Authorization: token {token}"], timeout=30)

    def execute(self, code, timeout=120, wait=True):
        """Run code; returns (status, text of outputs). With wait=False, returns the msg_id at once."""
        msg_id = uuid.uuid4().hex
        self.ws.send(json.dumps({
            "header": {"msg_id": msg_id, "username": "tests", "session": self.session,
                       "msg_type": "execute_request", "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True},
        }))
        if not wait:
            return msg_id
        return self.collect(msg_id, timeout)

    def collect(self, msg_id, timeout=120):
        out, status, idle = [], None, False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = json.loads(self.ws.recv())
            except (websocket.WebSocketConnectionClosedException, ConnectionError) as e:
                raise KernelDied(f"kernel connection closed: {e}") from e
            kind = msg["header"]["msg_type"]
            if kind == "status" and msg["content"]["execution_state"] in ("restarting", "dead"):
                raise KernelDied(f"kernel {msg['content']['execution_state']}")
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if kind == "stream":
                out.append(msg["content"]["text"])
            elif kind in ("execute_result", "display_data"):
                out.append(msg["content"]["data"].get("text/plain", ""))
            elif kind == "error":
                out.append(f"{msg['content']['ename']}: {msg['content']['evalue']}")
            elif kind == "execute_reply":
                status = msg["content"]["status"]
            elif kind == "status" and msg["content"]["execution_state"] == "idle":
                idle = True
            if status and idle:  # reply (shell) and idle (iopub) come in either order
                return status, "".join(out)
        raise TimeoutError(f"no reply to execute after {timeout}s")

    def interrupt(self):
        requests.post(f"{self.server_url}api/kernels/{self.id}/interrupt", headers=self.headers, timeout=30)

    def close(self):
        try:
            self.ws.close()
        finally:
            requests.delete(f"{self.server_url}api/kernels/{self.id}", headers=self.headers, timeout=30)
