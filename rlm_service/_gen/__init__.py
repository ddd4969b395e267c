"""Generated protobuf/gRPC code. Do not edit."""
