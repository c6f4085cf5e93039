"""`python -m services.alerts`: runs the alert gRPC server and its ANOMALIES consumer."""

from services.alerts.server import main

main()
