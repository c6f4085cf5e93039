// A few DOM helpers: build elements declaratively without a framework.

type Child = Node | string | number | null | undefined | false | Child[];
type Attrs = Record<string, string | number | boolean | null | undefined | EventListener>;

/** Creates an element: attributes (on* keys become listeners, false/null ones are left out) and children. */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs | null = null,
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs ?? {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (value === true) {
      el.setAttribute(key, "");
    } else {
      el.setAttribute(key, String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el: Node, children: Child[]): void {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.appendChild(typeof c === "object" ? c : document.createTextNode(String(c)));
  }
}

/** Replaces an element's children. */
export function setChildren(el: Element, ...children: Child[]): void {
  el.replaceChildren();
  append(el, children);
}

/** A panel: a titled card whose body shows loading, an error, or content. */
export class Panel {
  readonly el: HTMLElement;
  readonly body: HTMLElement;
  private readonly note: HTMLElement;

  constructor(title: string, id: string, extraClass = "") {
    this.body = h("div", { class: "panel-body" });
    this.note = h("span", { class: "panel-note" });
    this.el = h(
      "section",
      { class: `panel ${extraClass}`.trim(), id, "data-state": "loading" },
      h("header", { class: "panel-head" }, h("h2", null, title), this.note),
      this.body,
    );
    this.loading();
  }

  loading(what = "Loading…"): void {
    this.el.dataset.state = "loading";
    setChildren(this.body, h("div", { class: "loading" }, h("span", { class: "spinner" }), what));
  }

  /** Shows an error in place of the content: the panel stays, with what went wrong and what to try. */
  error(message: string, hint = ""): void {
    this.el.dataset.state = "error";
    setChildren(
      this.body,
      h("div", { class: "message error", role: "alert" }, h("strong", null, message), hint ? h("p", null, hint) : null),
    );
  }

  empty(message: string): void {
    this.el.dataset.state = "empty";
    setChildren(this.body, h("div", { class: "message muted" }, message));
  }

  show(...children: Child[]): void {
    this.el.dataset.state = "ready";
    setChildren(this.body, ...children);
  }

  setNote(text: string): void {
    this.note.textContent = text;
  }
}
