"""The gRPC-web gateway: browsers (and any HTTP/1.1 client) call every metermesh service through it,
with bearer-token auth, per-method authorization, limits, CORS, and the dashboard's static files."""
