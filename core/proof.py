"""Before a client hands a job its token, the server proves it already holds it.

An ``endpoint.json`` outlives a rank 0 killed by ``kill -9``; whatever takes its port
afterwards would otherwise be shown as the job and be sent the job's bearer token on
every request. So the client first sends a fresh random nonce, unauthenticated; the
server answers with an HMAC of the job id and the nonce under the token; only a server
that holds the token can compute it, and a recorded answer is worth nothing for the next
nonce. The token itself never travels until the answer checks out.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

__all__ = ["new_nonce", "proof", "proof_matches"]

#: Bytes of randomness in a nonce (hex on the wire).
NONCE_BYTES = 16


def new_nonce() -> str:
    return secrets.token_hex(NONCE_BYTES)


def proof(token: str, job_id: str, nonce: str) -> str:
    """The server's answer: HMAC-SHA256 of ``job_id`` and ``nonce`` under ``token``."""
    return hmac.new(token.encode(), f"forgather-control-proof:{job_id}:{nonce}".encode(), hashlib.sha256).hexdigest()


def proof_matches(token: str, job_id: str, nonce: str, answer: object) -> bool:
    return isinstance(answer, str) and hmac.compare_digest(proof(token, job_id, nonce), answer)
