"""A wasi:http component in Python, as componentize-py builds any of them.

    GET  <prefix>/hello   a greeting
    POST <prefix>/echo    the body back

Build: componentize-py -d ../../../wit/proxy -w proxy componentize app -o hello.wasm
"""

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports.streams import StreamError_Closed
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        path = (request.path_with_query() or "/").split("?")[0]
        if path.endswith("/hello"):
            respond(response_out, 200, b"hello from python")
        elif path.endswith("/echo"):
            respond(response_out, 200, read_body(request))
        else:
            respond(response_out, 404, b"no such route")


def read_body(request: IncomingRequest) -> bytes:
    body = request.consume()
    stream = body.stream()
    chunks = []
    while True:
        try:
            chunks.append(stream.blocking_read(65536))
        except Err as e:
            if isinstance(e.value, StreamError_Closed):
                break
            raise
    stream.__exit__(None, None, None)
    body.__exit__(None, None, None)
    return b"".join(chunks)


def respond(response_out: ResponseOutparam, status: int, content: bytes) -> None:
    response = OutgoingResponse(Fields.from_list([("content-type", b"text/plain")]))
    response.set_status_code(status)
    body = response.body()
    ResponseOutparam.set(response_out, Ok(response))
    stream = body.write()
    for start in range(0, len(content), 4096):
        stream.blocking_write_and_flush(content[start : start + 4096])
    stream.__exit__(None, None, None)
    OutgoingBody.finish(body, None)
