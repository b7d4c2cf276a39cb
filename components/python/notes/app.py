"""Notes: a small CRUD service in Python, against corral's own world.

    GET    /notes         the notes, oldest first
    POST   /notes         {"text": "..."} -> 201 with the note
    GET    /notes/<id>    one note, or 404
    DELETE /notes/<id>    204, or 404

Build: componentize-py -d ../../../wit -w corral:service/service componentize app -o notes.wasm
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import log, sqlite
from wit_world.imports.types import Request, Response

MAX_TEXT = 1000


class Lifecycle(exports.Lifecycle):
    def init(self) -> None:
        try:
            sqlite.execute(
                "CREATE TABLE IF NOT EXISTS notes ("
                " id INTEGER PRIMARY KEY,"
                " text TEXT NOT NULL CHECK (length(text) BETWEEN 1 AND 1000))",
                [],
            )
        except Err as e:
            raise Err(f"cannot create the notes table: {e.value}")


class Handler(exports.Handler):
    def handle(self, request: Request) -> Response:
        parts = [p for p in request.path.split("/") if p]
        try:
            if parts == ["notes"] and request.method == "GET":
                return json_response(200, [note(row) for row in query("SELECT id, text FROM notes ORDER BY id")])
            if parts == ["notes"] and request.method == "POST":
                return create(request)
            if len(parts) == 2 and parts[0] == "notes":
                return one(request.method, parts[1])
            return problem(404, "not-found", "Not found", f"no route for {request.method} {request.path}")
        except Err as e:
            log.log(log.Level.ERROR, f"database: {e.value}")
            return problem(500, "database", "Database failure", "the database failed")


def create(request: Request) -> Response:
    try:
        body = json.loads(bytes(request.body))
    except ValueError:
        return problem(400, "bad-json", "Bad JSON", "the body is not JSON")
    text = body.get("text") if isinstance(body, dict) else None
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT:
        return problem(422, "invalid", "Invalid note", f"text must be a non-blank string of at most {MAX_TEXT} characters")
    sqlite.execute("INSERT INTO notes (text) VALUES (?)", [sqlite.Value_Text(text)])
    created = {"id": sqlite.last_insert_rowid(), "text": text}
    log.log(log.Level.INFO, f"note {created['id']} created")
    return json_response(201, created)


def one(method: str, id_text: str) -> Response:
    if not id_text.isdigit():
        return problem(404, "not-found", "Not found", f"no note {id_text}")
    id_value = [sqlite.Value_Integer(int(id_text))]
    if method == "GET":
        rows = query("SELECT id, text FROM notes WHERE id = ?", id_value)
        if rows:
            return json_response(200, note(rows[0]))
    elif method == "DELETE":
        sqlite.execute("DELETE FROM notes WHERE id = ?", id_value)
        if sqlite.changes() == 1:
            return Response(status=204, headers=[], body=b"")
    else:
        return problem(405, "method-not-allowed", "Method not allowed", f"{method} is not allowed here")
    return problem(404, "not-found", "Not found", f"no note {id_text}")


def query(statement: str, parameters=()) -> list:
    return [[v.value for v in row.values] for row in sqlite.execute(statement, list(parameters)).rows]


def note(row: list) -> dict:
    return {"id": row[0], "text": row[1]}


def json_response(status: int, value) -> Response:
    body = json.dumps(value).encode()
    return Response(status=status, headers=[("content-type", "application/json")], body=body)


def problem(status: int, kind: str, title: str, detail: str) -> Response:
    """An RFC 9457 problem, as corral's own errors are."""
    fields = {"type": f"urn:corral:problem:{kind}", "title": title, "status": status, "detail": detail}
    body = json.dumps(fields).encode()
    return Response(status=status, headers=[("content-type", "application/problem+json")], body=body)
