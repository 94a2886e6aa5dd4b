"""The gRPC adapter (grpc.aio): fmnist.v1.Classifier (``classifier``) and KServe v2's
inference.GRPCInferenceService (``kserve``, its tensors in ``kserve_tensors``) over the dataplane;
``status`` (domain errors -> status codes, deadlines), ``transport`` (options, the handler that
bounds reading a request), ``auth`` (the token interceptor), ``reflection``."""
