// The live alert feed: one WatchAlerts stream for the whole signed-in session, shared by the
// overview, the alerts page and the navigation badge. It resumes from the last sequence it saw
// after a dropped stream (the service replays what was missed), and starts over from a fresh
// snapshot when the service says the resume point is out of range.

import { Code, ConnectError } from "@connectrpc/connect";
import { AlertChangeKind, AlertState, type Alert, type AlertUpdate } from "../gen/metermesh/alerts/v1/alerts_pb";
import type { Api } from "./api";
import { describeError, isCanceled } from "./api";

export type FeedStatus = "connecting" | "live" | "reconnecting" | "stopped";

export interface FeedChange {
  update: AlertUpdate | null;
  alert: Alert;
}

export function isActive(a: Alert): boolean {
  return a.state === AlertState.OPEN || a.state === AlertState.ACKNOWLEDGED;
}

export class AlertFeed extends EventTarget {
  /** Every alert seen this session (active ones from the snapshot, then all that changed), by id. */
  readonly alerts = new Map<string, Alert>();
  /** The latest updates, newest first (at most 50). */
  readonly recent: AlertUpdate[] = [];
  status: FeedStatus = "connecting";
  error = "";
  /** The sequence of the last update seen: where a dropped stream resumes. */
  private lastSequence: bigint | undefined;
  private readonly abort = new AbortController();

  constructor(
    private readonly api: Api,
    private readonly meterIds: string[],
  ) {
    super();
  }

  start(): void {
    void this.run();
  }

  stop(): void {
    this.abort.abort();
    this.setStatus("stopped", "");
  }

  activeCount(): number {
    let n = 0;
    for (const a of this.alerts.values()) if (isActive(a)) n++;
    return n;
  }

  /** Applies an alert returned by AcknowledgeAlert/ResolveAlert before its change arrives on the stream. */
  applyAlert(alert: Alert): void {
    const known = this.alerts.get(alert.alertId);
    if (known && newer(known, alert)) return;
    this.alerts.set(alert.alertId, alert);
    this.dispatchEvent(new CustomEvent<FeedChange>("change", { detail: { update: null, alert } }));
  }

  private setStatus(status: FeedStatus, error: string): void {
    if (this.status === status && this.error === error) return;
    this.status = status;
    this.error = error;
    this.dispatchEvent(new Event("status"));
  }

  private async run(): Promise<void> {
    let backoffMs = 500;
    const signal = this.abort.signal;
    while (!signal.aborted) {
      try {
        const filter = this.meterIds.length ? { meterIds: this.meterIds } : undefined;
        const stream = this.api.alerts.watchAlerts(
          { filter, afterSequence: this.lastSequence },
          {
            signal,
            // The stream is established once its headers arrive, even before any alert is sent.
            onHeader: () => this.setStatus("live", ""),
          },
        );
        for await (const res of stream) {
          if (res.update) this.apply(res.update);
          backoffMs = 500;
        }
        // The server ended the stream (it is stopping): resume from the last sequence.
        this.setStatus("reconnecting", "the alert stream ended; resuming");
      } catch (err) {
        if (signal.aborted || isCanceled(err)) return;
        if (err instanceof ConnectError) {
          if (err.code === Code.OutOfRange) {
            this.lastSequence = undefined; // too old or ahead: take a fresh snapshot
            this.alerts.clear();
          } else if (err.code === Code.PermissionDenied || err.code === Code.Unauthenticated) {
            this.setStatus("stopped", describeError(err, "The alerts service").message);
            return;
          }
        }
        this.setStatus("reconnecting", describeError(err, "The alerts service").message);
      }
      await sleep(backoffMs, signal);
      backoffMs = Math.min(backoffMs * 2, 10_000);
    }
  }

  private apply(update: AlertUpdate): void {
    this.lastSequence = update.sequence;
    const alert = update.alert;
    if (!alert) return;
    const known = this.alerts.get(alert.alertId);
    if (!known || !newer(known, alert)) this.alerts.set(alert.alertId, alert);
    this.recent.unshift(update);
    if (this.recent.length > 50) this.recent.length = 50;
    this.dispatchEvent(new CustomEvent<FeedChange>("change", { detail: { update, alert } }));
  }
}

/** True when a is a later state of the alert than b (by update time). */
function newer(a: Alert, b: Alert): boolean {
  const ta = a.updateTime ? a.updateTime.seconds * 1_000_000_000n + BigInt(a.updateTime.nanos) : 0n;
  const tb = b.updateTime ? b.updateTime.seconds * 1_000_000_000n + BigInt(b.updateTime.nanos) : 0n;
  return ta > tb;
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(t);
      resolve();
    });
  });
}

export const CHANGE_VERB: Record<AlertChangeKind, string> = {
  [AlertChangeKind.UNSPECIFIED]: "changed",
  [AlertChangeKind.CREATED]: "opened",
  [AlertChangeKind.UPDATED]: "updated",
  [AlertChangeKind.ESCALATED]: "escalated",
  [AlertChangeKind.ACKNOWLEDGED]: "acknowledged",
  [AlertChangeKind.RESOLVED]: "resolved",
};
