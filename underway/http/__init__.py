"""The HTTP API: framework-neutral handlers and thin Starlette and Flask adapters.

`underway.http.starlette.create_app(uw)` (or `uw.asgi()`) serves it over ASGI;
`underway.http.flask.UnderwayFlask` registers it on a Flask app. The route table,
status codes and problem codes are fixed by DESIGN.md ("The HTTP contract").
"""
