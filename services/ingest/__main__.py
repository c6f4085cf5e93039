"""`python -m services.ingest`: runs the ingest gRPC server."""

from services.ingest.server import main

main()
