// The metermesh dashboard: sign-in, the shell (navigation, who is signed in, live alert count) and a
// hash router over the pages. Each page gets a scope that is torn down when the user navigates away.

import "uplot/dist/uPlot.min.css";
import "../style.css";

import { AlertFeed } from "./alertfeed";
import { createApi, type Api } from "./api";
import { clearSession, loadSession, saveSession, type Session } from "./auth";
import type { Page, PageContext } from "./context";
import { h, setChildren } from "./dom";
import { alertsPage } from "./pages/alerts";
import { billingPage } from "./pages/billing";
import { meterPage } from "./pages/meter";
import { overviewPage } from "./pages/overview";
import { signinPage } from "./pages/signin";

const routes: { pattern: RegExp; page: Page; nav: string }[] = [
  { pattern: /^\/?$/, page: overviewPage, nav: "overview" },
  { pattern: /^\/meters\/([^/]+)$/, page: meterPage, nav: "overview" },
  { pattern: /^\/alerts$/, page: alertsPage, nav: "alerts" },
  { pattern: /^\/billing$/, page: billingPage, nav: "billing" },
];

const app = document.getElementById("app")!;

interface Signed {
  session: Session;
  api: Api;
  feed: AlertFeed;
  expiry: ReturnType<typeof setTimeout> | null;
  main: HTMLElement;
  nav: HTMLElement;
  badge: HTMLElement;
  leave: (() => void) | null;
}

let current: Signed | null = null;

function signIn(session: Session): void {
  saveSession(session);
  const api = createApi(
    () => current?.session.token ?? null,
    (message) => queueMicrotask(() => signOut(`The gateway no longer accepts your token (${message}). Sign in again.`)),
  );
  const feed = new AlertFeed(api, session.role === "consumer" ? session.meters : []);
  const main = h("main", { id: "page", class: "page" });
  const badge = h("span", { class: "nav-badge", id: "alert-badge", hidden: true });
  const link = (href: string, key: string, ...label: (string | Node)[]) => h("a", { href, "data-nav": key }, ...label);
  const nav = h(
    "nav",
    { class: "nav", "aria-label": "Pages" },
    link("#/", "overview", session.role === "consumer" ? "My meters" : "Overview"),
    link("#/alerts", "alerts", "Alerts", badge),
    link("#/billing", "billing", "Billing"),
  );
  const who = h(
    "div",
    { class: "who", id: "who", "data-role": session.role },
    h("span", { class: `role role-${session.role}` }, session.role),
    h("span", { class: "subject", title: "token subject" }, session.subject),
    session.role === "consumer" ? h("span", { class: "muted small", id: "who-meters" }, session.meters.join(", ") || "no meters") : null,
    h("button", { type: "button", class: "btn small", id: "sign-out", onclick: () => signOut() }, "Sign out"),
  );
  setChildren(app, h("header", { class: "topbar" }, h("a", { class: "brand", href: "#/" }, h("span", { class: "logo", "aria-hidden": "true" }, "⚡"), "metermesh"), nav, who), main);
  current = { session, api, feed, expiry: null, main, nav, badge, leave: null };
  if (session.expiresAt !== null) {
    // setTimeout's limit is about 24.8 days; a longer-lived token is checked again on the next load.
    const ms = session.expiresAt - Date.now();
    if (ms < 2 ** 31 - 1) current.expiry = setTimeout(() => signOut("Your token has expired. Sign in with a new one."), ms);
  }
  const updateBadge = () => {
    const n = feed.activeCount();
    badge.hidden = n === 0;
    badge.textContent = String(n);
    badge.dataset.count = String(n);
  };
  feed.addEventListener("change", updateBadge);
  feed.start();
  route();
}

function signOut(notice = ""): void {
  if (current) {
    current.leave?.();
    current.feed.stop();
    if (current.expiry) clearTimeout(current.expiry);
    current = null;
  }
  clearSession();
  showSignin(notice);
}

function showSignin(notice = ""): void {
  signinPage(
    app,
    (token) => createApi(() => token, () => {}),
    (s) => signIn(s),
    notice,
  );
}

function route(): void {
  const c = current;
  if (!c) return;
  c.leave?.();
  c.leave = null;
  const path = decodeURI(location.hash.replace(/^#/, "")) || "/";
  const match = routes.map((r) => ({ r, m: r.pattern.exec(path) })).find((x) => x.m);
  for (const a of c.nav.querySelectorAll<HTMLElement>("a[data-nav]")) {
    a.classList.toggle("active", a.dataset.nav === match?.r.nav);
  }
  const abort = new AbortController();
  const leaving: (() => void)[] = [];
  const ctx: PageContext = {
    api: c.api,
    session: c.session,
    feed: c.feed,
    signal: abort.signal,
    onLeave: (fn) => leaving.push(fn),
    every: (ms, fn) => {
      const t = setInterval(fn, ms);
      leaving.push(() => clearInterval(t));
    },
  };
  c.leave = () => {
    abort.abort();
    for (const fn of leaving) fn();
  };
  const root = h("div", { class: "page-inner", "data-page": match?.r.nav ?? "none" });
  setChildren(c.main, root);
  if (!match) {
    setChildren(root, h("div", { class: "page-error" }, h("h2", null, "Page not found"), h("p", null, `Nothing lives at ${path}.`), h("a", { href: "#/" }, "Go to the overview")));
    return;
  }
  match.r.page(root, ctx, match.m!.slice(1));
  window.scrollTo(0, 0);
}

window.addEventListener("hashchange", route);

const saved = loadSession();
if (saved) signIn(saved);
else showSignin();
