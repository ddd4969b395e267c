"""The in-sandbox side of the REPL.

Runs inside the sandbox under an unprivileged uid. It imports only the standard
library, grpc/protobuf and the generated callback stubs: nothing else of the
service, so nothing of the service's configuration or secrets is reachable.
"""
