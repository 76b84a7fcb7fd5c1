"""The public gRPC API (protos/tunery/v1/{files,fine_tuning,models}.proto): the REST API's services
(api/services/) over gRPC, with the same authentication, roles and errors (docs/grpc.md)."""
