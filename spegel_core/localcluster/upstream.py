"""The Debian ``docker-registry`` (Go distribution) as a real upstream, and skopeo to fill it."""

from __future__ import annotations

import http.client
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

REGISTRY_BINARY = "docker-registry"


@dataclass
class UpstreamRegistry:
    """A ``docker-registry serve`` process on a loopback address."""

    root: Path
    host: str = "127.0.0.1"
    port: int = 15000
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        """``host:port`` the registry listens on."""
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> UpstreamRegistry:
        """Start the registry (storage under ``root``) and wait until ``/v2/`` answers.

        :raises RuntimeError: docker-registry is missing, the address is taken, or it exited.
        :raises TimeoutError: it did not answer within ``timeout`` seconds.
        """
        binary = shutil.which(REGISTRY_BINARY)
        if binary is None:
            raise RuntimeError("docker-registry is not installed (apt-get install docker-registry)")
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((self.host, self.port))
            except OSError as exc:
                raise RuntimeError(f"{self.address} is already in use: {exc}") from None
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: error\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.root / 'data'}\n"
            "  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.address}\n"
        )
        log = open(self.root / "registry.log", "wb")  # noqa: SIM115 - owned by the process
        self.process = subprocess.Popen([binary, "serve", str(config)], stdout=log,
                                        stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {self.log()}")
            try:
                with urllib.request.urlopen(f"http://{self.address}/v2/", timeout=1):
                    return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.05)
        raise TimeoutError(f"docker-registry not answering on {self.address}: {self.log()}")

    def log(self) -> str:
        """The last 3000 characters of the registry's output."""
        path = self.root / "registry.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def push_layout(self, layout: Path, source_ref: str, dest_repo_tag: str) -> None:
        """``skopeo copy --all`` an image from an OCI layout (keeps the index digest)."""
        skopeo_copy(f"oci:{layout}:{source_ref}", f"docker://{self.address}/{dest_repo_tag}")

    def push_blob_file(self, repository: str, path: Path, digest: str) -> None:
        """Monolithic upload of a file through the distribution API (no re-compression).

        skopeo compresses uncompressed layers on the way to a registry, which
        changes their digests; benchmarks need the very same bytes on both sides.
        """
        conn = http.client.HTTPConnection(self.host, self.port, timeout=300)
        try:
            conn.request("POST", f"/v2/{repository}/blobs/uploads/")
            response = conn.getresponse()
            response.read()
            location = response.getheader("Location") or ""
            if response.status != 202 or not location:
                raise RuntimeError(f"upload start failed: HTTP {response.status}")
            target = urlsplit(location)
            query = f"{target.query}&" if target.query else ""
            with open(path, "rb") as body:
                conn.request("PUT", f"{target.path}?{query}digest={digest}", body=body,
                             headers={"Content-Length": str(path.stat().st_size),
                                      "Content-Type": "application/octet-stream"})
                response = conn.getresponse()
                response.read()
            if response.status != 201:
                raise RuntimeError(f"upload of {digest} failed: HTTP {response.status}")
        finally:
            conn.close()

    def put_manifest(self, repository: str, reference: str, data: bytes, media_type: str) -> None:
        """Upload a manifest under ``reference`` (a tag or its digest).

        :raises RuntimeError: the registry did not answer 201.
        """
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            conn.request("PUT", f"/v2/{repository}/manifests/{reference}", body=data,
                         headers={"Content-Type": media_type})
            response = conn.getresponse()
            response.read()
            if response.status != 201:
                raise RuntimeError(f"manifest put failed: HTTP {response.status}")
        finally:
            conn.close()

    def stop(self) -> None:
        """Terminate the registry (kill after 10 s) and wait for it; idempotent."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def skopeo_copy(source: str, dest: str, *, timeout: float = 300.0) -> str:
    """Run ``skopeo copy --all`` without TLS (loopback only); returns its output."""
    command = ["skopeo", "copy", "--all", "--src-tls-verify=false", "--dest-tls-verify=false",
               "--retry-times", "0", source, dest]
    if not source.startswith("docker://"):
        command.remove("--src-tls-verify=false")
    if not dest.startswith("docker://"):
        command.remove("--dest-tls-verify=false")
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"skopeo copy {source} {dest} failed: {result.stderr.strip()}")
    return result.stdout
