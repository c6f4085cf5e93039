"""The operator commands of `metermesh`: status, meters, readings, train, bill and alerts.

Every command reaches the services over gRPC, with a deadline on every call, at the addresses the
services themselves listen on (METERMESH_<SERVICE>_ADDR, overridable per command with --ingest,
--billing, ...). Every command takes `--output table|json`; `services.operator.app` holds the typer
apps that `services.cli` mounts. The runbook that uses them is docs/operations.md.

Exit codes, the same for every command:
  0  done
  1  done, but something failed or is down (rows not imported, meters not billed, a service down)
  2  bad usage or input (an unknown option value, an unreadable file, a CSV without the needed columns)
  3  a call failed: the service could not be reached or answered with an error (its message is shown)
"""
