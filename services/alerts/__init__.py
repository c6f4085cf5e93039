"""The alert service: anomaly events folded into deduplicated alerts with a lifecycle, and a live,
resumable stream of alert changes (metermesh.alerts.v1.AlertService)."""
