"""Throwaway certificates for the transport tests, made with the `openssl` CLI at test time.

Nothing here is ever committed: every run makes a fresh CA and keys in a temporary folder.
Layout (what `StackConfig.tls_dir` expects, plus the outsiders the tests call with):

* `ca.crt` — the CA every Cai service trusts;
* `gateway`, `orchestrator`, `retriever` — `cai-<component>`, signed by that CA (servers also
  name 127.0.0.1, the address the local stack dials);
* `attacker` — a certificate from the same CA under a name no service trusts;
* `rogue-ca.crt` and `impostor` — another CA, and a `cai-gateway` certificate it signed.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from cai_common.grpc_tls import TLSFiles

EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
# name -> (common name, CA that signs it, extra subjectAltName entries)
LEAVES = {
    "gateway": ("cai-gateway", "ca", ""),
    "orchestrator": ("cai-orchestrator", "ca", ",IP:127.0.0.1"),
    "retriever": ("cai-retriever", "ca", ",IP:127.0.0.1"),
    "attacker": ("attacker", "ca", ""),
    "impostor": ("cai-gateway", "rogue-ca", ""),
}


def _openssl(folder: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, text=True)


@dataclass(frozen=True)
class Pki:
    """The folder of a test PKI and the TLS files of each of its certificates."""

    folder: Path

    def tls(self, name: str, ca: str = "ca") -> TLSFiles:
        """Certificate and key `name`, trusting CA `ca` (as a client or server would load them)."""
        loaded = TLSFiles.load(
            str(self.folder / f"{name}.crt"),
            str(self.folder / f"{name}.key"),
            str(self.folder / f"{ca}.crt"),
        )
        assert loaded is not None
        return loaded


def make_pki(folder: Path) -> Pki:
    """Two CAs and the leaf certificates in LEAVES, valid for a day."""
    for ca in ("ca", "rogue-ca"):
        _openssl(
            folder, "req", "-x509", *EC, "-keyout", f"{ca}.key", "-out", f"{ca}.crt",
            "-subj", f"/CN=cai-test-{ca}", "-days", "1",
        )  # fmt: skip
    for name, (common_name, ca, extra_san) in LEAVES.items():
        _openssl(
            folder, "req", *EC, "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={common_name}",
        )  # fmt: skip
        (folder / f"{name}.ext").write_text(
            f"subjectAltName=DNS:{common_name}{extra_san}\nextendedKeyUsage=serverAuth,clientAuth\n"
        )
        _openssl(
            folder, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-out", f"{name}.crt", "-days", "1", "-extfile", f"{name}.ext",
        )  # fmt: skip
    return Pki(folder)
