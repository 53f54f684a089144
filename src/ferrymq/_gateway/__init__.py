"""The gateway: the HTTP front end that speaks both SQS wire protocols.

``start_gateway`` serves a ``ferrymq._api.Service``; ``Gateway.handle`` is the
request pipeline, usable without a socket; ``_protocol`` holds the codecs and
``_http`` the server. Stop a server with ``close_server``.
"""

from ferrymq._gateway._app import Gateway, start_gateway
from ferrymq._gateway._http import Request, Response, close_server, serve_http

__all__ = ["Gateway", "Request", "Response", "close_server", "serve_http", "start_gateway"]
