"""A stand-in for TorchServe's Context, recording what the handler sets."""

from __future__ import annotations

from pathlib import Path


class FakeContext:
    """What EnhancerHandler touches of TorchServe's Context, recording what it sets.

    Args:
        model_dir: the unpacked archive folder.
        handler_config: the ``handler:`` section of model-config.yaml.
        headers: per request, the request properties TorchServe would pass (header name -> value).
    """

    def __init__(
        self, model_dir: Path, handler_config: dict | None = None, headers: list[dict] | None = None
    ):
        self.system_properties = {"model_dir": str(model_dir), "gpu_id": None, "batch_size": 4}
        self.manifest = {"model": {"serializedFile": "enhancer.pt", "modelName": "enhancer"}}
        self.model_yaml_config = {"handler": handler_config or {}}
        self.headers = headers or []
        self.statuses: dict[int, tuple[int, str]] = {}
        self.content_types: dict[int, str] = {}
        self.response_headers: dict[int, dict[str, str]] = {}
        self.metrics = _FakeMetrics()

    def get_all_request_header(self, idx: int) -> dict:
        return self.headers[idx] if idx < len(self.headers) else {}

    def get_request_header(self, idx: int, key: str):
        return self.get_all_request_header(idx).get(key)

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self.statuses[idx] = (code, phrase)

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.content_types[idx] = value

    def set_response_header(self, idx: int, key: str, value: str) -> None:
        self.response_headers.setdefault(idx, {})[key] = value


class _FakeMetrics:
    def add_time(self, *args, **kwargs) -> None:
        pass


def load_handler_class():
    """``EnhancerHandler`` from ``handlers/enhancer_handler.py``, loaded from its file as TorchServe
    loads it (by its bare module name ``enhancer_handler``; it is not part of any package)."""
    import importlib.util
    import sys

    name = "enhancer_handler"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[2] / "handlers" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name].EnhancerHandler
