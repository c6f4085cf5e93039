"""`python -m services.billing`: runs the billing gRPC server."""

from services.billing.server import main

main()
