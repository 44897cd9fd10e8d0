"""The worker side: adapters, tools and the worker's telemetry API."""

__all__: list[str] = []
