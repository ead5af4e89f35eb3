"""Client-server API routes, one module per spec area.

Routes are thin: parse the request, call one service, return JSON. Each module exposes a
function that takes the services it needs and returns a Quart blueprint.
"""
