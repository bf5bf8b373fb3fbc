"""The Python SDK: ``Squad.load(...)`` in process, ``Squad.connect(url)`` over HTTP."""
from squad.sdk.remote import RemoteSquad

__all__ = ["RemoteSquad", "Squad"]


def __getattr__(name: str):
    # The in-process SDK pulls in torch; import it on first use.
    if name == "Squad":
        from squad.sdk.local import Squad

        return Squad
    raise AttributeError(f"module 'squad.sdk' has no attribute {name!r}")
