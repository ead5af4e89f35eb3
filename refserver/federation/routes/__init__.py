"""Server-server API routes, one module per endpoint group. Thin: authenticate (X-Matrix),
parse, call one service, return JSON."""
