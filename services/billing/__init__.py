"""BillingService: the data-driven tariff engine (schema, catalog, periods, engine; no gRPC) and, to come,
the servicer that stores bills and runs billing cycles."""
