// What every page gets: the API clients, the session, the live alert feed, and a scope that ends
// (cancelling its calls, timers and listeners) when the user leaves the page.

import type { AlertFeed } from "./alertfeed";
import type { Api } from "./api";
import type { Session } from "./auth";

export interface PageContext {
  api: Api;
  session: Session;
  feed: AlertFeed;
  /** Aborted when the page is left: pass it to every call the page makes. */
  signal: AbortSignal;
  /** Runs fn when the page is left. */
  onLeave(fn: () => void): void;
  /** Runs fn every ms milliseconds until the page is left (first run after ms). */
  every(ms: number, fn: () => void): void;
}

export type Page = (root: HTMLElement, ctx: PageContext, params: string[]) => void;
