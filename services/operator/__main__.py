"""`python -m services.operator`: the operator commands on their own (the same as in `metermesh`)."""

from services.operator.app import app

app(prog_name="metermesh")
