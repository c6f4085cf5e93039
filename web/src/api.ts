// The gRPC-web clients of every metermesh service, through the gateway that serves this page.
// One interceptor adds the bearer token to each call; an UNAUTHENTICATED answer signs the user out.

import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { AlertService } from "../gen/metermesh/alerts/v1/alerts_pb";
import { AnomalyService } from "../gen/metermesh/anomaly/v1/anomaly_pb";
import { BillingService } from "../gen/metermesh/billing/v1/billing_pb";
import { ForecastService } from "../gen/metermesh/forecast/v1/forecast_pb";
import { IngestService } from "../gen/metermesh/ingest/v1/ingest_pb";

export interface Api {
  ingest: Client<typeof IngestService>;
  anomaly: Client<typeof AnomalyService>;
  forecast: Client<typeof ForecastService>;
  billing: Client<typeof BillingService>;
  alerts: Client<typeof AlertService>;
}

/** The gateway's base URL: where this page was served from (so a path prefix keeps working). */
function baseUrl(): string {
  const url = new URL(".", document.baseURI);
  return url.href.replace(/\/$/, "");
}

export function createApi(getToken: () => string | null, onUnauthenticated: (message: string) => void): Api {
  const auth: Interceptor = (next) => async (req) => {
    const token = getToken();
    if (token) req.header.set("authorization", `Bearer ${token}`);
    try {
      return await next(req);
    } catch (err) {
      if (err instanceof ConnectError && err.code === Code.Unauthenticated) onUnauthenticated(err.rawMessage);
      throw err;
    }
  };
  const transport = createGrpcWebTransport({ baseUrl: baseUrl(), useBinaryFormat: true, interceptors: [auth] });
  return {
    ingest: createClient(IngestService, transport),
    anomaly: createClient(AnomalyService, transport),
    forecast: createClient(ForecastService, transport),
    billing: createClient(BillingService, transport),
    alerts: createClient(AlertService, transport),
  };
}

/** The status code name as gRPC spells it: PERMISSION_DENIED. */
export function codeName(code: Code): string {
  return (Code[code] ?? "UNKNOWN").replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

/** True when a call ended because we cancelled it (the user left the page). */
export function isCanceled(err: unknown): boolean {
  return (
    (err instanceof ConnectError && err.code === Code.Canceled) ||
    (err instanceof DOMException && err.name === "AbortError")
  );
}

export function connectCode(err: unknown): Code | null {
  return err instanceof ConnectError ? err.code : null;
}

/**
 * What a failed call means for someone looking at a panel: a headline naming the service, and a hint
 * with what to do. `what` names the service, e.g. "The forecast service".
 */
export function describeError(err: unknown, what: string): { message: string; hint: string } {
  if (!(err instanceof ConnectError)) {
    return { message: `${what} failed: ${String(err)}`, hint: "" };
  }
  const detail = err.rawMessage || "(no message)";
  switch (err.code) {
    case Code.PermissionDenied:
      return { message: `Permission denied (PERMISSION_DENIED): ${detail}`, hint: "Your token does not allow this." };
    case Code.Unauthenticated:
      return { message: `Not signed in (UNAUTHENTICATED): ${detail}`, hint: "Sign in again with a valid token." };
    case Code.Unavailable:
      return {
        message: `${what} is unavailable (UNAVAILABLE): ${detail}`,
        hint: "It may be down or starting; the rest of the dashboard keeps working. Reload to try again.",
      };
    case Code.Unimplemented:
      return {
        message: `${what} is not available (UNIMPLEMENTED): ${detail}`,
        hint: "This deployment does not offer it yet.",
      };
    case Code.FailedPrecondition:
      return { message: `${what} cannot answer yet (FAILED_PRECONDITION): ${detail}`, hint: "" };
    case Code.DeadlineExceeded:
      return { message: `${what} took too long (DEADLINE_EXCEEDED): ${detail}`, hint: "Reload to try again." };
    default:
      return { message: `${what}: ${codeName(err.code)}: ${detail}`, hint: "" };
  }
}
