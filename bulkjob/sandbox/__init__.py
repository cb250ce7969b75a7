"""The sandbox: a local look-alike of the bulk job API, with a ledger of what it accepted.

It serves the documented endpoints (token, submit, status, results, cancel, the admin
job list and usage) from memory, models the throttle's lockout, the account's quota and
running-job limit, and injects faults on request. It shares only the wire types with the
submitting side of the package.
"""

from ._config import SandboxConfig
from ._ledger import JobRecord, Ledger
from ._server import Sandbox

__all__ = ["JobRecord", "Ledger", "Sandbox", "SandboxConfig"]
