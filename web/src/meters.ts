// The meters a session may see: the whole fleet for an operator (ListMeters), the token's meters for
// a consumer (GetMeter each: a consumer may not list the fleet).

import type { Meter } from "../gen/metermesh/common/v1/common_pb";
import type { PageContext } from "./context";
import { tsMs } from "./format";

/** At most this many meters are listed for the overview; the rest are counted as "more". */
export const MAX_LISTED = 10_000;

export interface MeterList {
  meters: Meter[];
  truncated: boolean;
  /** Meters that could not be read (consumer claim entries), with why. */
  failures: { meterId: string; error: unknown }[];
}

export async function loadMeters(ctx: PageContext): Promise<MeterList> {
  if (ctx.session.role === "consumer") {
    const results = await Promise.allSettled(
      ctx.session.meters.map((meterId) => ctx.api.ingest.getMeter({ meterId }, { signal: ctx.signal })),
    );
    const meters: Meter[] = [];
    const failures: MeterList["failures"] = [];
    results.forEach((r, i) => {
      if (r.status === "fulfilled" && r.value.meter) meters.push(r.value.meter);
      else failures.push({ meterId: ctx.session.meters[i], error: r.status === "rejected" ? r.reason : null });
    });
    // Every claimed meter failing means the service is unreachable: report it as the error it is.
    if (meters.length === 0 && failures.length > 0 && failures[0].error) throw failures[0].error;
    return { meters, truncated: false, failures };
  }
  const meters: Meter[] = [];
  let pageToken = "";
  do {
    const res = await ctx.api.ingest.listMeters({ pageSize: 1000, pageToken }, { signal: ctx.signal });
    meters.push(...res.meters);
    pageToken = res.nextPageToken;
  } while (pageToken && meters.length < MAX_LISTED);
  return { meters, truncated: pageToken !== "", failures: [] };
}

/** A meter is reporting when its last reading was stored within three of its intervals (at least 5 min). */
export function isReporting(m: Meter, now = Date.now()): boolean {
  const seen = tsMs(m.lastSeenTime);
  if (seen === null) return false;
  const window = Math.max(300, 3 * (m.intervalSeconds || 900)) * 1000;
  return now - seen <= window;
}
