"""What rest_flip.py and rest_switch.py share: a keep-alive HTTP client for one agent's REST
API, and base64 for etcd's JSON gateway. Loopback only."""
import base64
import http.client
import urllib.parse


def b64(s):
    return base64.b64encode(s.encode()).decode()


class Api:
    """One keep-alive connection to an agent's REST API, reopened once if it broke."""

    def __init__(self, url):
        u = urllib.parse.urlparse(url)
        self.host, self.port = u.hostname, u.port
        self.conn = None

    def request(self, method, path, body=None, timeout=2):
        """(status, body text); (0, "") when the agent did not answer."""
        for _ in range(2):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
                headers = {"Content-Type": "application/json"} if body else {}
                self.conn.request(method, path, body=body, headers=headers)
                r = self.conn.getresponse()
                return r.status, r.read().decode(errors="replace")
            except (OSError, http.client.HTTPException):
                self.conn = None
        return 0, ""

    def code(self, path):
        return self.request("GET", path)[0]
