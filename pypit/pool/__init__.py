"""The supervisor side: pools of worker processes."""

__all__: list[str] = []
