"""TorchServe handler for the enhancer: a thin adapter over engine.Enhancer.

TorchServe imports this file by its bare name from the unpacked .mar, with the engine modules
beside it (shipped with --extra-files), and requires it to define exactly one class.

Requests: the raw image as the body (``curl -T photo.jpg``) with options as ``X-Enhance-*`` headers,
or multipart with the image in ``data`` and options as fields. Each request in a TorchServe batch
gets its own status: a bad one is answered 400/413/415/507 with a JSON body, the others succeed,
and the worker lives on.
"""

from __future__ import annotations

import logging
import time
from http import HTTPStatus
from pathlib import Path

import torch
from ts.torch_handler.base_handler import BaseHandler

from engine import Enhancer, Job, configure_cpu_threads
from errors import EnhanceError
from options import split_request
from settings import EnhancerSettings

logger = logging.getLogger(__name__)


class EnhancerHandler(BaseHandler):
    """Enhance and enlarge each request's image; tiles of batched requests share model calls."""

    def initialize(self, context):
        """Load the TorchScript model and its card from the unpacked archive.

        Raises:
            ValueError: invalid settings or card, or a model file that does not match its card's
                sha256 (a tampered archive): the worker refuses to start.
        """
        properties = context.system_properties
        model_dir = Path(properties["model_dir"])
        gpu_id = properties.get("gpu_id")
        use_gpu = torch.cuda.is_available() and gpu_id is not None
        self.device = torch.device(f"cuda:{gpu_id}" if use_gpu else "cpu")
        self.settings = EnhancerSettings.from_model_config(context.model_yaml_config)
        if not use_gpu:
            threads = configure_cpu_threads(self.settings)
            logger.info("CPU inference with %d threads", threads)
        model_path = model_dir / context.manifest["model"]["serializedFile"]
        self.enhancer = Enhancer.load(model_path, device=self.device, settings=self.settings)
        self.initialized = True

    def preprocess(self, data):
        """Split each request into image and options, validate, check limits and decode.

        Returns:
            One engine Job, or the EnhanceError that ends that request, per request.
        """
        items = []
        for idx, request in enumerate(data):
            headers = self.context.get_all_request_header(idx)
            try:
                image, options = split_request(request, headers, self.settings.option_header_prefix)
            except EnhanceError as error:
                items.append(error)
                continue
            items.append(self.enhancer.try_prepare(image, options))
        return items

    def inference(self, data, *args, **kwargs):
        """Run the model passes of every valid request together."""
        started = time.perf_counter()
        jobs = [item for item in data if isinstance(item, Job)]
        self.enhancer.run(jobs)
        if jobs:
            elapsed_ms = 1000 * (time.perf_counter() - started)
            logger.info("%d request(s) enhanced in %.0f ms", len(jobs), elapsed_ms)
        return data

    def postprocess(self, data):
        """Encode each result, or answer its error, setting the per-request status and type."""
        responses = []
        for idx, item in enumerate(data):
            result = self.enhancer.try_finish(item)
            if isinstance(result, EnhanceError):
                logger.info("request %d refused: %d %s", idx, result.status, result.message)
                self.context.set_response_status(
                    result.status, HTTPStatus(result.status).phrase, idx
                )
                self.context.set_response_content_type(idx, "application/json")
                responses.append(result.to_json())
            else:
                self.context.set_response_content_type(idx, result.content_type)
                responses.append(result.data)
        return responses
