"""The MLServer side of `make bench-peer`: a minimal onnxruntime runtime for MLServer 1.7.

It runs in .venv-peer (MLServer's own environment), never in the project's: MLServer loads it by
`implementation` from model-settings.json. It does what fmnist-serve's runner does, so the
comparison is of the serving engines, not of the model code: the same model.onnx, the same
onnxruntime build and session options (parameters.extra.intra_op_threads threads, no spinning),
input `image` uint8 [N,1,28,28], outputs `logits` and `probabilities` (those asked for).
"""

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxRuntime(MLModel):
    async def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = int((self.settings.parameters.extra or {}).get(
            "intra_op_threads", 0))
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(self.settings.parameters.uri, options,
                                             providers=["CPUExecutionProvider"])
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        images = NumpyCodec.decode_input(payload.inputs[0]).astype(np.uint8, copy=False)
        names = [o.name for o in payload.outputs or []] or ["logits", "probabilities"]
        arrays = self._session.run(names, {"image": images})
        return InferenceResponse(model_name=self.name, outputs=[
            NumpyCodec.encode_output(name, array) for name, array in zip(names, arrays)])
