"""heldout's client: `heldout.Client` for scripts, the `heldout` command line on top of it.

Installing `heldout` gives these alone (httpx, typer, rich, pyyaml); `heldout[server]` and
`heldout[worker]` add what running a server or a worker needs.
"""

from heldout.client import FINAL, ApiError, Client, RefusedLocally

__all__ = ["FINAL", "ApiError", "Client", "RefusedLocally"]
