"""The HTTP/1.1 + JSON face: the Go service's /completion contract, an SSE stream of
CompletionEvents, OpenAPI, metrics and the progress page, on HTTP_PORT."""

from rlm_service.http.app import HttpFace, start_http_face

__all__ = ["HttpFace", "start_http_face"]
