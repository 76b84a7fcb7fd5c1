"""The API suites' own fixture: ``api``, a server with keys, seeded objects and a gRPC channel to it (the public gRPC
API's harness, tests/grpc_cases.py), which every gRPC suite takes; a suite that needs another server defines its own."""

from tests.grpc_cases import api  # noqa: F401 (a fixture, found here by pytest)
