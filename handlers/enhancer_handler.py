"""TorchServe handler for the enhancer: a thin adapter over ``enhancer.engine.Enhancer``.

TorchServe imports this file by its bare name from the unpacked .mar and requires it to define
exactly one class. The engine is the package ``enhancer``, shipped whole beside this file in the
archive (``--extra-files``), and imported by name like everywhere else in the project.

Requests: the raw image as the body (``curl -T photo.jpg``) with options as ``X-Enhance-*`` headers,
or multipart with the image in ``data`` and options as fields (``enhancer.serving.torchserve``).
Each request in a TorchServe batch gets its own status: a bad one is answered 400/413/415/503/507
with a JSON body, the others succeed, and the worker lives on.

At start the unpacked archive is checked against its manifest (``enhancer.integrity``) before the
engine is imported: a damaged or edited file refuses the start with one line naming it.
"""

from __future__ import annotations

import logging
import time
from http import HTTPStatus

from ts.torch_handler.base_handler import BaseHandler

from enhancer.errors import EnhanceError
from enhancer.integrity import verify_folder

logger = logging.getLogger(__name__)


class EnhancerHandler(BaseHandler):
    """Enhance and enlarge each request's image; tiles of batched requests share model calls."""

    def initialize(self, context):
        """Load the TorchScript model and its card from the unpacked archive.

        Raises:
            ArchiveDamagedError: a file of the unpacked archive differs from its manifest.
            ValueError: invalid settings or card, or a model file that does not match its card's
                sha256 (a tampered archive): the worker refuses to start.
        """
        checked = verify_folder(context.system_properties["model_dir"])
        logger.info("archive verified: %d files match its manifest", checked)
        # the engine is imported only once its files are known to be the archive's own
        from enhancer.serving import torchserve

        self.door = torchserve
        self.enhancer, self.settings, self.device = torchserve.load_engine(context)
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
                image, options = self.door.split_request(request, headers)
            except EnhanceError as error:
                items.append(error)
                continue
            items.append(self.enhancer.try_prepare(image, options))
        # the whole batch must end within the time budget: late jobs that would not are 503
        return self.enhancer.admit_batch(items)

    def inference(self, data, *args, **kwargs):
        """Run the model passes of every valid request together."""
        started = time.perf_counter()
        jobs = [item for item in data if not isinstance(item, EnhanceError)]
        self.enhancer.run(jobs)
        if jobs:
            elapsed_ms = 1000 * (time.perf_counter() - started)
            logger.info("%d request(s) enhanced in %.0f ms", len(jobs), elapsed_ms)
        return data

    def describe_handle(self):
        """What ``GET /models/enhancer?customized=true`` shows as ``customizedMetadata``: the
        worker's cost estimator (calibrated throughput, card, limits), for the page's queue."""
        return self.door.describe(self.enhancer)

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
                for name, value in result.headers.items():
                    self.context.set_response_header(idx, name, value)
                responses.append(result.data)
        return responses
