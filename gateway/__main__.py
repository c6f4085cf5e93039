"""`python -m gateway`: serves the gRPC-web gateway with uvicorn on METERMESH_GATEWAY_ADDR."""

from gateway.server import main

main()
