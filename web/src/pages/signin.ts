// Sign-in: paste a bearer JWT. The token's claims are read to show the role and meters; the gateway
// is asked once to accept it, so a wrong or expired token is refused here and not on every panel.

import { Code, ConnectError } from "@connectrpc/connect";
import type { Api } from "../api";
import { parseToken, type Session } from "../auth";
import { h, setChildren } from "../dom";

export function signinPage(root: HTMLElement, api: (token: string) => Api, onSignedIn: (s: Session) => void, notice = ""): void {
  const textarea = h("textarea", {
    id: "token",
    name: "token",
    rows: 5,
    required: true,
    spellcheck: "false",
    autocomplete: "off",
    placeholder: "eyJhbGciOi…",
    "aria-describedby": "token-help",
  });
  const error = h("div", { class: "message error", role: "alert", id: "signin-error", hidden: !notice }, notice);
  const button = h("button", { type: "submit", class: "btn primary" }, "Sign in");
  const form = h(
    "form",
    { class: "signin-card", id: "signin-form" },
    h("h1", null, "Sign in to metermesh"),
    h("label", { for: "token", class: "field-label" }, "Bearer token (JWT)"),
    textarea,
    h(
      "p",
      { id: "token-help", class: "muted small" },
      "Paste a token issued for you. For development: ",
      h("code", null, "metermesh token --role operator --subject alice"),
      " or ",
      h("code", null, "metermesh token --role consumer --subject bob --meter SIM-RES-0001"),
      ". It is kept in this tab only (sessionStorage).",
    ),
    error,
    h("div", { class: "actions" }, button),
  );
  const fail = (message: string) => {
    error.hidden = false;
    error.textContent = message;
    button.disabled = false;
  };
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    let session: Session;
    try {
      session = parseToken(textarea.value);
    } catch (err) {
      fail((err as Error).message);
      return;
    }
    button.disabled = true;
    error.hidden = true;
    // One cheap call the role may make; only a refused token stops the sign-in (a service that is
    // down shows up on the pages instead).
    const client = api(session.token);
    const probe =
      session.role === "consumer" && session.meters.length
        ? client.ingest.getMeter({ meterId: session.meters[0] })
        : client.ingest.listMeters({ pageSize: 1 });
    probe.then(
      () => onSignedIn(session),
      (err: unknown) => {
        if (err instanceof ConnectError && err.code === Code.Unauthenticated) {
          fail(`The gateway refused this token: ${err.rawMessage}`);
        } else {
          onSignedIn(session);
        }
      },
    );
  });
  setChildren(root, h("div", { class: "signin" }, form));
  textarea.focus();
}
