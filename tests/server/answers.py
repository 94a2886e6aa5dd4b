"""The server's fmnist.v1 answers as arrays, for tests that compare another protocol's output
(KServe v2 over gRPC or HTTP) with them on the same pixels."""

from __future__ import annotations

import numpy as np
from fmnist.v1 import classifier_pb2 as pb

import model_contract as contract


def classify_probabilities(stub, model: str, images: list[pb.Image]) -> np.ndarray:
    """fmnist.v1 Classify's probabilities for `images`, [n, 10] by class id."""
    response = stub.Classify(pb.ClassifyRequest(model=model, images=images,
                                                top_k=contract.NUM_CLASSES), timeout=30)
    out = np.zeros((len(images), contract.NUM_CLASSES), np.float32)
    for row, c in zip(out, response.classifications):
        for p in c.predictions:
            row[p.class_id] = p.probability
    return out
